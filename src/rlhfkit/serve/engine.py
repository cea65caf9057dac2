"""What every serving engine shares: one request in, a stream of chunks out.

An engine takes a ``Request`` (a text prompt, or chat messages it renders with the model's own
chat template) and yields ``Chunk``s: text as it is released, the tokens behind it with their
log-probabilities when asked, and last the finish reason and token counts. The API layer builds
both streamed and whole replies from the same chunks, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class Request:
    """One completion to generate, with the OpenAI sampling settings the engines share."""

    prompt: str | Messages  # text as is (completions) or messages for the chat template (chat)
    max_tokens: int | None  # None: up to the end of the model's context
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the completion ends before the first one
    seed: int | None = None  # the same seed, prompt and settings give the same completion
    logprobs: int | None = None  # None: none; k: each token's log-prob and the top k alternatives


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token: its text, its log-probability under the model (temperature 1, before
    top-p, as vLLM and llama.cpp report it) and the most likely alternatives at its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob), most likely first


@dataclass(frozen=True)
class Chunk:
    """Part of a completion. The last chunk of a stream carries ``finish_reason`` ("stop": EOS
    or a stop string; "length": max_tokens or the context) and the token counts."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()  # the tokens released with this text (when asked)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestError(ValueError):
    """A request the engine cannot serve (too long for the context, a chat without a template):
    the client's mistake, answered with a 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class Engine(Protocol):
    """Generates completions; safe to call from many threads at once."""

    def stream(self, request: Request) -> Iterator[Chunk]:
        """The completion's chunks in order, at least one, the last with its finish reason. Raises
        ``RequestError`` before the first chunk when the request cannot be served."""
        ...

    def close(self) -> None:
        """Stops any worker threads; the engine serves nothing after."""
        ...


def join(chunks: Iterator[Chunk]) -> Chunk:
    """A whole completion from its stream: texts and tokens concatenated, the last chunk's end."""
    texts: list[str] = []
    tokens: list[TokenLogprob] = []
    last = Chunk("")
    for chunk in chunks:
        texts.append(chunk.text)
        tokens.extend(chunk.tokens)
        last = chunk
    return Chunk(
        "".join(texts),
        tuple(tokens),
        last.finish_reason,
        last.prompt_tokens,
        last.completion_tokens,
    )
