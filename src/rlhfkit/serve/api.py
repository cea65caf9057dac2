"""The subset of the OpenAI API that ``rlhfkit serve`` speaks: request bodies and replies.

Bodies are pydantic models that refuse what they do not know (an unsupported field is a 400
naming it, not a setting silently ignored). Replies are built from an engine's ``Chunk``s:
``completion``/``chat_completion`` from the whole text, ``*_chunk`` for each server-sent event.
No web framework here: ``app.py`` routes requests to these functions.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlhfkit.serve.engine import Chunk, Request, TokenLogprob

MAX_STOPS = 4  # as OpenAI's API allows


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Body(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1  # one choice per prompt
    frequency_penalty: Literal[0] = 0  # accepted at their neutral values only
    presence_penalty: Literal[0] = 0
    user: str | None = None  # an end-user id for the caller's own logs; unused here

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"give at most {MAX_STOPS} non-empty stop strings")
        return stop

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(Body):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] = 16  # OpenAI's default for completions
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: Literal[False] = False  # echoing the prompt back is not supported

    def requests(self) -> list[Request]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        return [
            Request(
                prompt,
                self.max_tokens,
                self.temperature,
                self.top_p,
                self.stops(),
                self.seed,
                self.logprobs,
            )
            for prompt in prompts
        ]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatBody(Body):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # None: up to the context's end
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # its newer name
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def request(self) -> Request:
        messages = [{"role": m.role, "content": m.content} for m in self.messages]
        return Request(
            messages,
            self.max_completion_tokens or self.max_tokens,
            self.temperature,
            self.top_p,
            self.stops(),
            self.seed,
            (self.top_logprobs or 0) if self.logprobs else None,
        )


def parse(body_type: type[Body], data: Any) -> Body:
    """The validated body, or ``BadRequest`` naming the first wrong field."""
    try:
        body = body_type.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        else:
            message = f"{param}: {first['msg']}" if param else first["msg"]
        raise BadRequest(message, param) from None
    if isinstance(body, ChatBody) and body.top_logprobs and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    if isinstance(body, CompletionBody) and body.stream and not isinstance(body.prompt, str):
        raise BadRequest("stream one prompt at a time (prompt is a list)", "prompt")
    return body


class BadRequest(ValueError):
    """A request the API refuses: a 400 with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def model_list(model_id: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "rlhfkit"}],
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def reply(reply_id: str, kind: str, model_id: str, choices: list[dict], **rest: Any) -> dict:
    """What every reply and event holds: its id, kind ("object"), time, model and choices."""
    return {
        "id": reply_id,
        "object": kind,
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        **rest,
    }


def usage(chunks: list[Chunk]) -> dict:
    prompt = sum(chunk.prompt_tokens for chunk in chunks)
    completion = sum(chunk.completion_tokens for chunk in chunks)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- /v1/completions -----------------------------------------------------------------------------


def text_logprobs(tokens: tuple[TokenLogprob, ...], offset: int) -> dict:
    """The completions API's logprobs: parallel lists, ``offset`` the first token's position."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


def completion(model_id: str, results: list[Chunk], logprobs: bool) -> dict:
    """A whole /v1/completions reply, one choice per prompt."""
    choices = [
        {
            "index": index,
            "text": result.text,
            "logprobs": text_logprobs(result.tokens, 0) if logprobs else None,
            "finish_reason": result.finish_reason,
        }
        for index, result in enumerate(results)
    ]
    return reply(new_id("cmpl"), "text_completion", model_id, choices, usage=usage(results))


def completion_chunk(
    reply_id: str, model_id: str, chunk: Chunk, logprobs: bool, offset: int
) -> dict:
    """One server-sent event of a streamed completion; ``offset``: characters sent before it."""
    choice = {
        "index": 0,
        "text": chunk.text,
        "logprobs": text_logprobs(chunk.tokens, offset) if logprobs else None,
        "finish_reason": chunk.finish_reason,
    }
    return reply(reply_id, "text_completion", model_id, [choice])


# --- /v1/chat/completions ------------------------------------------------------------------------


def chat_logprobs(tokens: tuple[TokenLogprob, ...]) -> dict:
    """The chat API's logprobs: one entry per token, with its top alternatives."""

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(*alt) for alt in t.top]}
            for t in tokens
        ]
    }


def chat_completion(model_id: str, result: Chunk, logprobs: bool) -> dict:
    """A whole /v1/chat/completions reply."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": result.text},
        "logprobs": chat_logprobs(result.tokens) if logprobs else None,
        "finish_reason": result.finish_reason,
    }
    return reply(new_id("chatcmpl"), "chat.completion", model_id, [choice], usage=usage([result]))


def chat_chunk(
    reply_id: str, model_id: str, delta: dict, logprobs: dict | None, finish: str | None
) -> dict:
    """One server-sent event of a streamed chat reply."""
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return reply(reply_id, "chat.completion.chunk", model_id, [choice])


def usage_chunk(reply_id: str, model_id: str, kind: str, last: Chunk) -> dict:
    """The extra last event of a stream asked for with stream_options.include_usage."""
    return reply(reply_id, kind, model_id, [], usage=usage([last]))
