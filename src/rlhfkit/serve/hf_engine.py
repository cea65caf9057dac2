"""The transformers engine: requests that wait together are decoded together.

One worker thread owns the model. Each request is encoded (and refused if it cannot fit the
context) in its caller's thread, then queued; the worker takes every queued request, up to
``max_batch``, left-pads them into one batch and runs one ``model.generate`` over it. Requests
that arrive meanwhile form the next batch, so under load a batch fills up while the previous
one decodes (static batching: a batch runs until its longest row is done).

Each row keeps its own settings inside that one call: ``RowSampler`` picks every row's token
with the row's temperature, top-p and random generator (seeded by the request, so a seed gives
the same completion whichever requests it shares a batch with, up to float rounding of the
padded batch), and ``RowFinisher`` ends each row at its EOS, stop string or max_tokens and
streams its text to the caller as it is decoded.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rlhfkit.data.sequences import render_prompt, uses_chat_template
from rlhfkit.generation.hf import HFBackend, own_generation_defaults
from rlhfkit.serve.engine import (
    Chunk,
    Messages,
    Request,
    TextRelease,
    TokenLogprob,
    completion_budget,
    render_chat,
)


@dataclass(frozen=True)
class Options:
    """What the hf engine needs beyond the model's path."""

    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 16  # requests decoded together at most


def load(model: str, options: Options) -> HFEngine:
    """The engine on a local model directory or an embedded alias (smollm2)."""
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    loaded, tokenizer = load_causal_lm(
        ModelCfg(path=model, device=options.device, dtype=options.dtype)  # type: ignore[arg-type]
    )
    return HFEngine(loaded, tokenizer, options.max_batch)


@dataclass
class Job:
    """A request in the worker's hands."""

    request: Request
    prompt_ids: list[int]
    max_tokens: int
    out: queue.Queue  # Chunks, then None; or the exception that ended the batch
    generator: torch.Generator
    release: TextRelease
    generated: int = 0
    done: bool = False
    picked: TokenLogprob | None = field(default=None)  # this step's token, when logprobs are asked


class RowSampler(LogitsProcessor):
    """Picks each row's next token with its own settings, then hands generate all the mass on it
    (generate runs greedy). Records the token's log-prob under the model when a row asks."""

    def __init__(self, jobs: list[Job], token_text: Callable[[int], str]):
        self.jobs, self.token_text = jobs, token_text

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = scores.float().log_softmax(dim=-1)  # (B, V), the model's own distribution
        chosen = logprobs.argmax(dim=-1)  # (B,), what greedy rows (and finished ones) take
        for row, job in enumerate(self.jobs):
            if job.done:
                continue
            request = job.request
            if request.temperature > 0:
                chosen[row] = sample(
                    logprobs[row] / request.temperature, request.top_p, job.generator
                )
            if request.logprobs is not None:
                job.picked = self._logprob(logprobs[row], int(chosen[row]), request.logprobs)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)

    def _logprob(self, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
        alternatives = logprobs.topk(top) if top else None
        return TokenLogprob(
            self.token_text(token),
            float(logprobs[token]),
            tuple(
                (self.token_text(int(i)), float(v))
                for v, i in zip(*alternatives, strict=True)  # type: ignore[misc]
            )
            if alternatives is not None
            else (),
        )


def sample(scaled_logprobs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """A token drawn from softmax(scaled_logprobs) cut to its top-p nucleus, with ``generator``:
    the first whose cumulative probability passes a uniform variate (one per token, exact)."""
    probs = scaled_logprobs.softmax(dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keeps at least the top token
        probs = probs.scatter(0, order[outside], 0.0)
    cdf = probs.double().cumsum(-1)  # (V,); float64: rounding near 1 would bias the tail
    u = torch.rand(1, dtype=torch.float64, generator=generator) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1))


class RowFinisher(StoppingCriteria):
    """After each step: sends each row's new text to its caller and ends the rows that are done
    (EOS, a stop string, max_tokens)."""

    def __init__(self, jobs: list[Job], eos_ids: list[int]):
        self.jobs, self.eos_ids = jobs, set(eos_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        newest = input_ids[:, -1].tolist()  # (B,)
        for job, token in zip(self.jobs, newest, strict=True):
            if job.done:
                continue
            job.generated += 1
            if token in self.eos_ids:
                end(job, job.release.finish(), "stop")
                continue
            chunk, stopped = job.release.add(token, job.picked)
            if stopped:
                end(job, chunk, "stop")
            elif job.generated >= job.max_tokens:
                end(job, merge(chunk, job.release.finish()), "length")
            elif chunk.text or chunk.tokens:
                job.out.put(chunk)
        return torch.tensor([job.done for job in self.jobs], device=input_ids.device)


def merge(first: Chunk, second: Chunk) -> Chunk:
    return Chunk(first.text + second.text, first.tokens + second.tokens)


def end(job: Job, chunk: Chunk, reason: str) -> None:
    job.done = True
    job.out.put(
        Chunk(
            chunk.text,
            chunk.tokens,
            reason,
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=job.generated,
        )
    )
    job.out.put(None)


class HFEngine:
    """A transformers causal LM served with request batching; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        backend = HFBackend(model, tokenizer)  # the same EOS and padding rules as training
        self.eos_ids, self.pad_id = backend.eos_ids, backend.pad_id
        self.context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.chat = uses_chat_template(tokenizer, "auto")
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="rlhfkit-serve-hf", daemon=True)
        self.worker.start()

    def stream(self, request: Request) -> Iterator[Chunk]:
        job = self._job(request)
        self.queue.put(job)
        while True:
            item = job.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join()

    def _job(self, request: Request) -> Job:
        prompt_ids = self._encode(request.prompt)
        max_tokens = completion_budget(request, len(prompt_ids), self.context)
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return Job(
            request,
            prompt_ids,
            max_tokens,
            queue.Queue(),
            torch.Generator().manual_seed(seed),
            TextRelease(self._decode, request.stop),
        )

    def _encode(self, prompt: str | Messages) -> list[int]:
        if isinstance(prompt, str):  # completions: the text as is, with the tokenizer's BOS
            return self.tokenizer(prompt)["input_ids"]
        template = partial(render_prompt, self.tokenizer, chat=True) if self.chat else None
        # the template already wrote any BOS token; adding special tokens would double it
        return self.tokenizer(render_chat(template, prompt), add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _work(self) -> None:
        while (first := self.queue.get()) is not None:
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # closing: finish this batch, then stop
                    self.queue.put(None)
                    break
                jobs.append(job)
            try:
                self._generate(jobs)
            except Exception as error:  # the callers see it; the worker serves the next batch
                for job in jobs:
                    if not job.done:
                        job.out.put(error)

    @torch.no_grad()
    def _generate(self, jobs: list[Job]) -> None:
        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id)  # (B, P), padded on the left
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)  # (B, P)
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            attention_mask[row, width - len(job.prompt_ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=max(job.max_tokens for job in jobs),
            do_sample=False,  # RowSampler picks; generate's argmax takes its pick
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            disable_compile=True,
        )
        with own_generation_defaults(self.model, self.eos_ids, self.pad_id):
            self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([RowSampler(jobs, self._token_text)]),
                stopping_criteria=StoppingCriteriaList([RowFinisher(jobs, self.eos_ids)]),
            )
        for job in jobs:  # generate stopped at the longest max_tokens; every row has ended
            if not job.done:
                end(job, job.release.finish(), "length")
