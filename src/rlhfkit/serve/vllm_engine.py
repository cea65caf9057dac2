"""The vLLM engine: vLLM's async engine, whose continuous batching decodes concurrent requests
together, a new request joining the running batch at the next step.

vLLM's ``AsyncLLM`` lives on an asyncio event loop; the serving API calls engines from many
threads with synchronous iterators. So the engine owns one event loop in a thread of its own:
``stream`` hands each request to that loop (``run_coroutine_threadsafe``), where a task feeds
vLLM's output deltas into a queue the caller's thread reads. Leaving a stream early (a stop
string found, a client gone) cancels the task, which aborts the request inside vLLM.

Prompts are encoded here, with the model's own tokenizer and chat template, exactly as the hf
engine encodes them, and vLLM gets token ids. vLLM only generates: the text is decoded here,
token by token, by the same ``TextRelease`` as the hf engine's (stop strings, half UTF-8
characters), so both engines cut and stream text the same way. The log-probs are vLLM's
default "raw_logprobs": log softmax of the logits before temperature, penalties and top-p,
which is what the API reports.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError
from rlhfkit.serve.engine import (
    Chunk,
    Request,
    TextRelease,
    TokenLogprob,
    completion_budget,
    encode_prompt,
)

NOT_INSTALLED = (
    "serve --engine vllm: vllm is not installed in this environment; on a GPU pip install "
    "vllm (it pins its own torch: best in an environment of its own, with rlhfkit[serve]); "
    "on a CPU `make vllm-env` and .vllm-env/bin/rlhfkit (docs/serve.md)"
)


@dataclass(frozen=True)
class Options:
    """What the vllm engine needs beyond the model's path."""

    dtype: str = "auto"  # vLLM's --dtype; auto: vLLM's choice (bfloat16 on most CPUs)
    max_model_len: int | None = None  # None: the model's context
    gpu_memory_utilization: float = 0.9  # share of the GPU's memory (a CPU's: of the RAM)


@dataclass(frozen=True)
class Delta:
    """What one of vLLM's outputs adds to a completion."""

    token_ids: list[int]
    logprobs: list[Mapping[int, Any]] | None  # per token: {token id: vllm Logprob}
    finish_reason: str | None


def load(model: str, options: Options) -> VLLMEngine:
    """The engine on a local model directory or an embedded alias (smollm2)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vllm is imported
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ConfigError(NOT_INSTALLED) from None
    from rlhfkit.models import resolve_model_dir

    return VLLMEngine(resolve_model_dir(model), options)


class VLLMEngine:
    """A model served by vLLM's async engine; see the module docstring."""

    def __init__(self, model_dir: Path, options: Options):
        from rlhfkit.data.sequences import uses_chat_template
        from rlhfkit.generation.hf import eos_token_ids, saved_generation_config
        from rlhfkit.models import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir)
        self.chat = uses_chat_template(self.tokenizer, "auto")
        self.eos_ids = eos_token_ids(saved_generation_config(model_dir), self.tokenizer)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="rlhfkit-serve-vllm", daemon=True
        )
        self.thread.start()
        try:  # built on the loop, whose tasks then carry vLLM's outputs
            self.llm = self._run(_start(model_dir, options))
        except BaseException:
            self._stop_loop()
            raise
        self.context: int = self.llm.model_config.max_model_len

    def stream(self, request: Request) -> Iterator[Chunk]:
        prompt_ids = encode_prompt(self.tokenizer, request.prompt, self.chat)
        max_tokens = completion_budget(request, len(prompt_ids), self.context)
        deltas: queue.Queue[Delta | BaseException | None] = queue.Queue()
        task = asyncio.run_coroutine_threadsafe(
            self._generate(prompt_ids, self._params(request, max_tokens), deltas), self.loop
        )
        try:
            yield from self._chunks(request, len(prompt_ids), max_tokens, deltas)
        finally:
            task.cancel()  # ended early (a stop string, a client gone): vLLM drops the request

    def close(self) -> None:
        self._run(_shutdown(self.llm))
        self.llm = None  # vLLM's __del__ shuts down again: now, not at interpreter exit
        self._stop_loop()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def _params(self, request: Request, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=request.temperature,  # 0: greedy
            top_p=request.top_p,
            seed=request.seed,
            logprobs=request.logprobs,
            stop_token_ids=self.eos_ids,
            detokenize=False,  # the text is decoded here, stop strings included
            output_kind=RequestOutputKind.DELTA,
        )

    async def _generate(self, prompt_ids: list[int], params: Any, deltas: queue.Queue) -> None:
        """Runs on the loop: vLLM's outputs for one request, as deltas, into ``deltas``."""
        from vllm.inputs import tokens_input

        try:
            async for output in self.llm.generate(
                tokens_input(prompt_ids), params, uuid.uuid4().hex
            ):
                completion = output.outputs[0]
                deltas.put(
                    Delta(
                        list(completion.token_ids),
                        completion.logprobs,
                        completion.finish_reason,
                    )
                )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the caller's thread raises it
            deltas.put(error)
        deltas.put(None)

    def _chunks(
        self, request: Request, prompt_tokens: int, max_tokens: int, deltas: queue.Queue
    ) -> Iterator[Chunk]:
        release = TextRelease(self._decode, request.stop)
        generated = 0

        def last(chunk: Chunk, reason: str) -> Chunk:
            return Chunk(chunk.text, chunk.tokens, reason, prompt_tokens, generated)

        while True:
            delta = deltas.get()
            if isinstance(delta, BaseException):
                raise delta
            if delta is None:
                raise RuntimeError("vLLM ended a request without a finish reason")
            steps = delta.logprobs or [None] * len(delta.token_ids)
            for token, step in zip(delta.token_ids, steps, strict=True):
                generated += 1
                if token in self.eos_ids:  # ends the text; not part of it
                    yield last(release.finish(), "stop")
                    return
                chunk, stopped = release.add(token, self._logprob(token, step, request.logprobs))
                if stopped:
                    yield last(chunk, "stop")
                    return
                if generated >= max_tokens:
                    rest = release.finish()
                    yield last(Chunk(chunk.text + rest.text, chunk.tokens + rest.tokens), "length")
                    return
                if chunk.text or chunk.tokens:
                    yield chunk
            if delta.finish_reason is not None:  # ended by vLLM for a reason not seen above
                raise RuntimeError(f"vLLM ended a request early ({delta.finish_reason})")

    def _logprob(
        self, token: int, step: Mapping[int, Any] | None, top: int | None
    ) -> TokenLogprob | None:
        """The token's log-prob and the ``top`` most likely tokens, from vLLM's entry for its
        place: the sampled token and the top ones, each with its rank in the vocabulary."""
        if step is None or top is None:
            return None
        best = sorted((entry.rank, id_) for id_, entry in step.items() if entry.rank <= top)
        return TokenLogprob(
            self._token_text(token),
            float(step[token].logprob),
            tuple((self._token_text(id_), float(step[id_].logprob)) for _, id_ in best[:top]),
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


async def _start(model_dir: Path, options: Options) -> Any:
    """vLLM's async engine on ``model_dir``. Eager on a CPU: there torch.compile costs minutes
    at every start (docs/vllm.md); on a GPU vLLM captures its CUDA graphs."""
    from vllm import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=str(model_dir),
        dtype=options.dtype,  # type: ignore[arg-type]
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=current_platform.is_cpu(),
        generation_config="vllm",  # the request's settings, not the model's sampling defaults
        logprobs_mode="raw_logprobs",  # the model's own distribution, before temperature
        disable_log_stats=True,
    )
    return AsyncLLM.from_engine_args(args)


async def _shutdown(llm: Any) -> None:
    llm.shutdown()
