"""The default generation backend: transformers ``model.generate`` with a KV cache.

Prompts are rendered (chat template or plain text), checked against the context length,
left-padded into batches of ``gen.batch_size`` and sampled. The log-probability of each
sampled token under softmax(logits / T) is recorded on the fly, so RL gets the sampling
policy's logprobs without a second forward pass. The token itself is drawn by
``sampling.draw`` (``DrawToken``) rather than by generate's ``torch.multinomial``: the same
distribution, and on a CPU a sixth less time per decoding step.

With ``gen.compile on`` (what ``auto`` means in a training loop on CUDA) decoding uses a static
KV cache and a compiled one-token step that replays as a CUDA graph: a small model's eager
decoding launches a few hundred kernels per token and leaves the GPU idle between them (3-4x
faster sampling for SmolLM2 on an H100, bench/README.md).

Rows of a batch with the same prompt (GRPO's groups) run that prompt through the model once:
the KV cache of each distinct prompt is computed, copied to the rows that share it, and handed
to ``generate``, which then decodes from the prompt's last token as usual.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from rlhfkit import distributed
from rlhfkit.batch import Prompt, Rollout
from rlhfkit.config import GenCfg
from rlhfkit.data.sequences import render_prompt, uses_chat_template
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.generation import register_backend
from rlhfkit.generation.sampling import draw
from rlhfkit.models import autocast_region, uses_autocast
from rlhfkit.progress import progress


class SampledTokenLogprobs(LogitsProcessor):
    """Records log p(sampled token) under softmax(logits / T) while ``generate`` runs.

    Placed first in the processor list, it sees each step's raw logits. The token drawn from
    them appears only at the next call, as the last column of ``input_ids``, so it keeps one step
    of log-probabilities, (B, V), instead of every step's logits, (B, R, V), which is what
    ``output_logits=True`` would hold until the end.
    """

    def __init__(self, temperature: float):
        self.scale = 1.0 / temperature if temperature > 0 else 1.0  # greedy: the raw distribution
        self.picked: list[torch.Tensor] = []  # one (B,) per generated step
        self.pending: torch.Tensor | None = None  # (B, V) log-probs of the step just sampled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.pending = (scores.float() * self.scale).log_softmax(dim=-1)  # (B, V)
        return scores

    def _take(self, sampled: torch.Tensor) -> None:
        if self.pending is not None:
            self.picked.append(self.pending.gather(-1, sampled[:, None]).squeeze(-1))
            self.pending = None

    def logprobs(self, response_ids: torch.Tensor) -> torch.Tensor:
        """(B, R) logprobs of ``response_ids``, the tokens generate returned."""
        self._take(response_ids[:, -1])
        if len(self.picked) != response_ids.shape[1]:
            raise RuntimeError(
                f"recorded {len(self.picked)} steps for {response_ids.shape[1]} "
                "generated tokens; another logits processor ran before this one"
            )
        return torch.stack(self.picked, dim=1)


class DrawToken(LogitsProcessor):
    """Draws the next token from softmax(scores) and hands generate all the mass on it.

    Last in the processor list, after the temperature, top-k and top-p warpers, it sees what
    generate's own sampling would: generate then runs greedy (``do_sample=False``), and its
    argmax takes the drawn token. ``sampling.draw`` keeps generate's distribution without the
    cost of its ``torch.multinomial`` on a CPU: 26-33 ms a step for 16 rows of a 49k vocabulary
    on 2 cores, against about 1 ms (on a GPU it calls ``torch.multinomial``).
    """

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = draw(scores.softmax(dim=-1))  # (B,)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)


def token_choice(cfg: GenCfg) -> list[LogitsProcessor]:
    """The processors after the recorder that pick each token: greedy decoding needs none;
    sampling warps the logits as transformers would (in its order), then draws."""
    if cfg.temperature == 0:
        return []
    chain: list[LogitsProcessor] = []
    if cfg.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        chain.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        chain.append(TopPLogitsWarper(cfg.top_p))
    return [*chain, DrawToken()]


class StopOnStrings(StoppingCriteria):
    """Ends a row once its generated text holds a stop string.

    transformers' own StopStringCriteria also matches a stop string that begins in the prompt (a
    chat template ending in a newline and the stop "\\n\\n" would end any completion that opens
    with a newline), so this one looks at generated tokens only, as the stop strings of vLLM and
    the OpenAI API do. It decodes the last few tokens alone: a stop string of n bytes lies within
    the last n tokens when its final token arrives, and one more token in front keeps decoding
    artefacts at the window's edge (a dropped leading space, half a UTF-8 character) outside it.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_width = prompt_width
        self.window = max(len(stop.encode()) for stop in stops) + 1

    def holds_stop(self, generated: list[int]) -> bool:
        """Whether the last tokens of a completion hold a stop string."""
        tail = self.tokenizer.decode(generated[-self.window :], skip_special_tokens=True)
        return any(stop in tail for stop in self.stops)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        start = max(self.prompt_width, input_ids.shape[1] - self.window)
        tails = input_ids[:, start:].tolist()  # (B, <= window)
        return torch.tensor([self.holds_stop(tail) for tail in tails], device=input_ids.device)


WIDTH_STEP = 64  # compiled decoding pads prompt batches to a multiple of this many tokens


@register_backend("hf")
class HFBackend:
    """Hugging Face transformers generation: left-padded batches, one KV cache per batch."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(model.generation_config, tokenizer)
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else self.eos_ids[0]
        # processors that change the policy's logits before a token is chosen (ILQL's
        # advantage steering); the recorded log-probs are those of the changed distribution
        self.steer: list[LogitsProcessor] = []

    def generate(
        self, prompts: list[Prompt], cfg: GenCfg, seed: int, response_prefix: str = ""
    ) -> Rollout:
        """One completion per prompt. The same prompts, cfg (batch size included) and seed give
        the same rollout; the global CPU and CUDA random state is left as it was.

        ``response_prefix`` is text every answer starts with (a hindsight-trained model's
        positive phrase): it ends each prompt's tokens, and completions hold what follows it.
        """
        if not prompts:
            raise DataError("no prompts to generate from; give at least one")
        if cfg.compile == "on" and uses_autocast(self.model):
            raise ConfigError(
                "gen.compile = 'on' cannot decode a model under model.autocast: "
                "the static KV cache holds one dtype, and autocast makes keys "
                "float32 and values bfloat16; set gen.compile auto (eager under "
                "autocast) or model.autocast off"
            )
        if cfg.compile == "on" and self.steer:
            raise ConfigError(
                "gen.compile = 'on' cannot decode with advantage steering (ILQL heads): "
                "they read each step's hidden state through a hook a compiled step skips; "
                "set gen.compile auto or off"
            )
        if cfg.compile == "on" and distributed.is_data_parallel(self.model):
            raise ConfigError(
                "gen.compile = 'on' cannot decode a model made data-parallel by torchrun "
                "(FSDP2's gathers and hooks in a compiled step are untried); set gen.compile "
                "auto (eager there) or off"
            )
        prompt_ids = self._encode(prompts, cfg.chat_template, response_prefix)
        self._check_lengths(prompt_ids, cfg.max_new_tokens)
        device = self.model.device
        cuda_devices = []
        if device.type == "cuda":
            cuda_devices = [torch.cuda.current_device() if device.index is None else device.index]
        batches = []
        generated, started = 0, time.perf_counter()
        with (
            torch.random.fork_rng(devices=cuda_devices),
            own_generation_defaults(self.model, self.eos_ids, self.pad_id),
            autocast_region(self.model),  # with model.autocast: weights cast once, not per token
            progress("generating", total=len(prompts)) as (bar, task),
        ):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), cfg.batch_size):
                end = start + cfg.batch_size
                batch = self._generate_batch(prompts[start:end], prompt_ids[start:end], cfg)
                batches.append(batch)
                generated += int(batch.response_lengths.sum())
                rate = generated / (time.perf_counter() - started)
                bar.update(task, advance=len(batch), info=f"{rate:.0f} tokens/s")
        return Rollout.concat(batches, pad_token_id=self.pad_id)

    def _encode(
        self, prompts: list[Prompt], chat_template: str, response_prefix: str = ""
    ) -> list[list[int]]:
        """Token ids of each prompt, through the chat template when it applies, then the
        response prefix (after the opened assistant turn of a chat, after a text prompt)."""
        if not uses_chat_template(self.tokenizer, chat_template, "gen.chat_template"):
            for index, prompt in enumerate(prompts):
                if not isinstance(prompt, str):
                    reason = (
                        "gen.chat_template is off"
                        if chat_template == "off"
                        else "this model has no chat template"
                    )
                    raise DataError(
                        f"prompt {index} is a chat (a list of messages), but {reason}; "
                        "give plain-text prompts or a model with a chat template"
                    )
            return self.tokenizer([prompt + response_prefix for prompt in prompts])["input_ids"]
        from jinja2 import TemplateError

        texts = []
        for index, prompt in enumerate(prompts):
            try:
                texts.append(render_prompt(self.tokenizer, prompt, chat=True) + response_prefix)
            except TemplateError as e:
                raise DataError(
                    f"prompt {index}: the model's chat template rejected it ({e}); "
                    "check the roles and their order"
                ) from None
        # the template already wrote any BOS token; adding special tokens would double it
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _check_lengths(self, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        """Fail before generating anything if a prompt cannot fit with its completion."""
        context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if context is not None and max_new_tokens >= context:
            raise ConfigError(
                f"gen.max_new_tokens {max_new_tokens} leaves no room for a prompt in "
                f"the model's context of {context} tokens; lower it"
            )
        for index, ids in enumerate(prompt_ids):
            if not ids:
                raise DataError(f"prompt {index} encodes to no tokens; remove it or fill it in")
            if context is not None and len(ids) + max_new_tokens > context:
                raise DataError(
                    f"prompt {index} is {len(ids)} tokens, but the model's context of {context} "
                    f"tokens minus gen.max_new_tokens {max_new_tokens} leaves room for "
                    f"{context - max_new_tokens}; shorten the prompt or lower gen.max_new_tokens"
                )

    def _generate_batch(
        self, prompts: list[Prompt], prompt_ids: list[list[int]], cfg: GenCfg
    ) -> Rollout:
        device = self.model.device
        compiled = cfg.compile == "on"  # a training loop turns auto on for CUDA (rollout.sample)
        rows = len(prompt_ids)
        if compiled:
            # A compiled step is specialised to its shapes: every batch is cfg.batch_size rows
            # (the last filled with copies, dropped below) and its width a multiple of
            # WIDTH_STEP, so that the static cache, and the step compiled for it, are reused.
            prompt_ids = prompt_ids + [prompt_ids[-1]] * (cfg.batch_size - rows)
        padded = self.tokenizer.pad(
            {"input_ids": prompt_ids},
            padding_side="left",
            pad_to_multiple_of=WIDTH_STEP if compiled else None,
            return_tensors="pt",
        )
        input_ids = padded["input_ids"].to(device)  # (b, P)
        prompt_mask = padded["attention_mask"].to(device)  # (b, P)
        recorder = SampledTokenLogprobs(cfg.temperature)
        stopper = StopOnStrings(self.tokenizer, cfg.stop, input_ids.shape[1]) if cfg.stop else None
        # sharded over ranks (FSDP2), each forward is a collective: every rank decodes until the
        # last is done, and none takes a prefill the others might not
        synced = distributed.forward_is_collective(self.model)
        prefilled = (
            {} if compiled or synced else self._prefill_once_per_prompt(input_ids, prompt_mask)
        )
        sequences = self.model.generate(  # (b, P + R), under torch.no_grad
            input_ids=input_ids,
            attention_mask=prompt_mask,
            generation_config=self._generation_config(cfg, compiled),
            logits_processor=LogitsProcessorList([*self.steer, recorder, *token_choice(cfg)]),
            stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
            synced_gpus=synced,
            **prefilled,
        )
        response_ids = sequences[:rows, input_ids.shape[1] :]  # (b, R)
        logprobs = recorder.logprobs(sequences[:, input_ids.shape[1] :])[:rows]  # (b, R)
        if compiled:  # drop the fillers and the padding columns every kept row has
            first = int(prompt_mask[:rows].argmax(dim=1).min())
            input_ids, prompt_mask = input_ids[:rows, first:], prompt_mask[:rows, first:]

        # A row ends at its first EOS (kept: the policy chose to stop) or at the token that
        # completed a stop string; generate fills the rest of a finished row with padding.
        is_eos = torch.isin(response_ids, torch.tensor(self.eos_ids, device=device))  # (b, R)
        width = response_ids.shape[1]
        lengths, finished, completions = [], [], []
        for row_ids, row_eos in zip(response_ids.tolist(), is_eos.tolist(), strict=True):
            eos_at = row_eos.index(True) if True in row_eos else None
            text_ids = row_ids[:eos_at]  # (EOS is no part of the text)
            text = self._decode(text_ids)
            stop_at = None
            if stopper and any(stop in text for stop in cfg.stop):
                stop_at = next(
                    (k for k in range(1, len(text_ids) + 1) if stopper.holds_stop(text_ids[:k])),
                    None,
                )
            if stop_at is not None:
                length, done = stop_at, True
                text = cut_before_first(self._decode(text_ids[:stop_at]), cfg.stop)
            elif eos_at is not None:
                length, done = eos_at + 1, True
            else:
                length, done = width, False  # ran into max_new_tokens
            lengths.append(length)
            finished.append(done)
            completions.append(text)

        lengths_t = torch.tensor(lengths, device=device)  # (b,)
        keep = max(lengths)
        response_mask = (torch.arange(keep, device=device) < lengths_t[:, None]).long()  # (b, R')
        return Rollout(
            prompts=list(prompts),
            completions=completions,
            prompt_ids=input_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids[:, :keep].masked_fill(response_mask == 0, self.pad_id),
            response_mask=response_mask,
            logprobs=logprobs[:, :keep].masked_fill(response_mask == 0, 0.0),
            finished=torch.tensor(finished, device=device),
        )

    @torch.no_grad()
    def _prefill_once_per_prompt(
        self, input_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> dict[str, Any]:
        """``generate``'s cache argument when rows repeat a prompt, else nothing: the KV cache of
        every prompt column but the last, computed once per distinct prompt and copied to each
        row that has it. The rows' positions are the ones ``generate`` would give them.

        Only for a cache of plain full-attention layers (Llama, Qwen, Mistral without a sliding
        window...); anything else runs every row, as does a batch without repeats.
        """
        rows, width = input_ids.shape
        if width < 2:
            return {}
        distinct, source = torch.unique(
            torch.cat([input_ids, prompt_mask], dim=1), dim=0, return_inverse=True
        )  # (d, 2P), (b,)
        if len(distinct) == rows:
            return {}
        cache = DynamicCache(config=self.model.config)
        if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return {}
        decoder = self.model.get_decoder()
        # transformers renamed past_key_values to cache (5.2x); take whichever this one uses (the
        # class's signature: model.autocast wraps the instance's forward in (*args, **kwargs))
        name = (
            "cache"
            if "cache" in inspect.signature(type(decoder).forward).parameters
            else "past_key_values"
        )
        ids, mask = distinct[:, : width - 1], distinct[:, width:-1]  # (d, P - 1) each
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate counts them
        decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{name: cache},
        )
        cache.batch_select_indices(source)
        return {name: cache}

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generation_config(self, cfg: GenCfg, compiled: bool = False) -> GenerationConfig:
        # greedy as far as generate knows: token_choice's processors sample, and generate adds no
        # warpers of its own (with do_sample it would, and its top_k of 50 where unset)
        caching: dict[str, Any] = {"disable_compile": True}
        if compiled:
            from transformers.generation import CompileConfig

            # transformers compiles the one-token step once a static cache is in use ("reduce-
            # overhead": CUDA graphs on a GPU); off CUDA it has to be told it may
            compile_config = CompileConfig()
            compile_config._compile_all_devices = True
            caching = {"cache_implementation": "static", "compile_config": compile_config}
        return GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            **caching,
        )


def cut_before_first(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to the earliest stop string in it."""
    starts = [text.find(stop) for stop in stops if stop in text]
    return text[: min(starts)] if starts else text


@contextmanager
def own_generation_defaults(model: Any, eos_ids: list[int], pad_id: int) -> Iterator[None]:
    """Hide the model's own generation defaults (generation_config.json) while generating.

    transformers fills every setting left unset from them: a repetition_penalty or a top_k
    there would change the sampling policy behind gen.*'s back and make the recorded logprobs
    wrong. Only the special token ids are kept.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id, eos_token_id=eos_ids, pad_token_id=pad_id
    )
    try:
        yield
    finally:
        model.generation_config = saved


def saved_generation_config(directory: Any) -> Any:
    """A model directory's generation config: its generation_config.json, or the one
    transformers derives from its config.json (an export or checkpoint written without it)."""
    from transformers import AutoConfig, GenerationConfig

    if (Path(directory) / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(directory, local_files_only=True)
    return GenerationConfig.from_model_config(
        AutoConfig.from_pretrained(directory, local_files_only=True)
    )


def eos_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation config's
    (chat models often end a turn with a token other than the tokenizer's EOS)."""
    ids = [tokenizer.eos_token_id]
    configured = generation_config.eos_token_id
    ids += configured if isinstance(configured, list) else [configured]
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    if not ids:
        raise ConfigError(
            "the model and its tokenizer define no EOS token, so a completion could "
            "never finish; set eos_token in the tokenizer's config"
        )
    return ids
