"""What every serving engine shares: one request in, a stream of chunks out.

An engine takes a ``Request`` (a text prompt, or chat messages it renders with the model's own
chat template) and yields ``Chunk``s: text as it is released, the tokens behind it with their
log-probabilities when asked, and last the finish reason and token counts. The API layer builds
both streamed and whole replies from the same chunks, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


def render_chat(template: Callable[[Messages], str] | None, messages: Messages) -> str:
    """``messages`` rendered by a model's chat template (``None``: the model has none), with the
    client's mistakes as ``RequestError``s."""
    if template is None:
        raise RequestError(
            "this model has no chat template; use /v1/completions with a text prompt", "messages"
        )
    from jinja2 import TemplateError

    try:
        return template(messages)
    except TemplateError as e:
        raise RequestError(f"the model's chat template rejected the messages: {e}") from None


def encode_prompt(tokenizer: Any, prompt: str | Messages, chat: bool) -> list[int]:
    """The prompt's token ids: a text as is, with the tokenizer's BOS; messages rendered with the
    model's own chat template (``chat``: whether it has one)."""
    from rlhfkit.data.sequences import render_prompt

    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    template = (lambda messages: render_prompt(tokenizer, messages, chat=True)) if chat else None
    # the template already wrote any BOS token; adding special tokens would double it
    return tokenizer(render_chat(template, prompt), add_special_tokens=False)["input_ids"]


def completion_budget(request: Request, prompt_tokens: int, context: int | None) -> int:
    """How many tokens the completion may have: ``max_tokens``, or the rest of the context
    (256 when the model states none). Refuses a prompt that encodes to nothing or that, with
    ``max_tokens``, does not fit the context (code ``context_length_exceeded``)."""
    param = "prompt" if isinstance(request.prompt, str) else "messages"
    if prompt_tokens == 0:
        raise RequestError("the prompt encodes to no tokens; give some text", param)
    room = context - prompt_tokens if context else None
    if room is not None and room < 1:
        raise RequestError(
            f"the prompt is {prompt_tokens} tokens, and the model's context is {context}; "
            "shorten it",
            param,
            "context_length_exceeded",
        )
    max_tokens = request.max_tokens or room or 256
    if room is not None and max_tokens > room:
        raise RequestError(
            f"max_tokens {max_tokens} with a prompt of {prompt_tokens} tokens passes the "
            f"model's context of {context}; ask for at most {room}",
            "max_tokens",
            "context_length_exceeded",
        )
    return max_tokens


class TextRelease:
    """One completion's tokens turned into text that is safe to send.

    Text is held back while its end could still begin a stop string (the completion must end
    before it) or ends in half a UTF-8 character. A token is released with the text it begins
    in; tokens that begin inside a stop string are dropped with it.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]):
        self.decode, self.stops = decode, stops
        self.holdback = max((len(stop) for stop in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # the decoded completion so far
        self.released = 0  # characters of text sent
        self.pending: list[tuple[int, TokenLogprob | None]] = []  # (where it begins, its logprob)

    def add(self, token_id: int, logprob: TokenLogprob | None) -> tuple[Chunk, bool]:
        """The chunk that ``token_id`` releases, and whether a stop string has ended the text."""
        self.pending.append((len(self.text), logprob))
        self.ids.append(token_id)
        self.text = self.decode(self.ids)
        found = [self.text.find(stop) for stop in self.stops if stop in self.text]
        if found:
            return self._release(min(found)), True
        safe = len(self.text.rstrip("\ufffd")) if self.text.endswith("\ufffd") else len(self.text)
        return self._release(max(self.released, min(safe, len(self.text) - self.holdback))), False

    def finish(self) -> Chunk:
        """The rest of the text (the completion ended by EOS or its length)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> Chunk:
        text = self.text[self.released : end]
        tokens = [lp for start, lp in self.pending if start < end and lp is not None]
        self.pending = [(start, lp) for start, lp in self.pending if start >= end]
        self.released = max(self.released, end)
        return Chunk(text, tuple(tokens))
