"""What the batching engines (hf, onnx) share: a worker that decodes waiting requests together,
and each row's own sampling and ending inside the shared batch.

Each request is encoded (and refused if it cannot fit the context) in its caller's thread, then
queued; one worker thread owns the model, takes every queued request up to ``max_batch`` and
hands them to the engine's ``_generate`` as one batch. Requests that arrive meanwhile form the
next batch, so under load a batch fills up while the previous one decodes (static batching: a
batch runs until its longest row is done).

Inside a batch every row keeps its own settings: ``pick_tokens`` picks each row's token with the
row's temperature, top-p and random generator (seeded by the request, so a seed gives the same
completion whichever requests it shares a batch with, up to float rounding of the padded batch),
and ``advance`` ends each row at its EOS, stop string or max_tokens and streams its text to the
caller as it is decoded.
"""

from __future__ import annotations

import abc
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.sequences import uses_chat_template
from rlhfkit.serve.engine import (
    Chunk,
    Request,
    TextRelease,
    TokenLogprob,
    completion_budget,
    encode_prompt,
)


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


def pick_tokens(
    jobs: list[Job], logits: torch.Tensor, token_text: Callable[[int], str]
) -> torch.Tensor:
    """Each row's next token (B,) from the step's ``logits`` (B, V): greedy or sampled with its
    own settings; a row that asks for logprobs gets its token's in ``job.picked``."""
    logprobs = logits.float().log_softmax(dim=-1)  # (B, V), the model's own distribution
    chosen = logprobs.argmax(dim=-1)  # (B,), what greedy rows (and finished ones) take
    for row, job in enumerate(jobs):
        if job.done:
            continue
        request = job.request
        if request.temperature > 0:
            chosen[row] = sample(logprobs[row] / request.temperature, request.top_p, job.generator)
        if request.logprobs is not None:
            job.picked = token_logprob(
                logprobs[row], int(chosen[row]), request.logprobs, token_text
            )
    return chosen


def token_logprob(
    logprobs: torch.Tensor, token: int, top: int, token_text: Callable[[int], str]
) -> TokenLogprob:
    """``token``'s log-probability in ``logprobs`` (V,) and the ``top`` most likely tokens."""
    alternatives = logprobs.topk(top) if top else None
    return TokenLogprob(
        token_text(token),
        float(logprobs[token]),
        tuple(
            (token_text(int(i)), float(v))
            for v, i in zip(*alternatives, strict=True)  # type: ignore[misc]
        )
        if alternatives is not None
        else (),
    )


def advance(job: Job, token: int, eos_ids: set[int]) -> None:
    """``token`` generated for ``job``: sends its new text and ends it when it is done (EOS, a
    stop string, max_tokens)."""
    if job.done:
        return
    job.generated += 1
    if token in eos_ids:
        end(job, job.release.finish(), "stop")
        return
    chunk, stopped = job.release.add(token, job.picked)
    if stopped:
        end(job, chunk, "stop")
    elif job.generated >= job.max_tokens:
        end(job, merge(chunk, job.release.finish()), "length")
    elif chunk.text or chunk.tokens:
        job.out.put(chunk)


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


class BatchedEngine(abc.ABC):
    """An engine whose worker thread decodes waiting requests together; a subclass says how one
    batch is decoded (``_generate``), calling ``pick_tokens`` and ``advance`` at each step."""

    def __init__(
        self, tokenizer: Any, eos_ids: list[int], context: int | None, max_batch: int, name: str
    ):
        self.tokenizer, self.max_batch = tokenizer, max_batch
        self.eos_ids, self.context = eos_ids, context
        self.chat = uses_chat_template(tokenizer, "auto")
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name=f"rlhfkit-serve-{name}", daemon=True)
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

    @abc.abstractmethod
    def _generate(self, jobs: list[Job]) -> None:
        """Decode ``jobs`` as one batch until every one has ended (each engine's own model)."""

    def _job(self, request: Request) -> Job:
        prompt_ids = encode_prompt(self.tokenizer, request.prompt, self.chat)
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return Job(
            request,
            prompt_ids,
            completion_budget(request, len(prompt_ids), self.context),
            queue.Queue(),
            torch.Generator().manual_seed(seed),
            TextRelease(self._decode, request.stop),
        )

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
