"""The FastAPI app of ``rlhfkit serve``: OpenAI's routes over one engine.

Every route checks the API key when one is set (401 otherwise, unknown routes included); a body
that is not what the API takes is a 400 with OpenAI's error object, so OpenAI's own clients
raise their usual exceptions. Engines are synchronous (a thread per request, which the hf
engine's queue turns into batches): each request runs in the thread pool, and a stream's
chunks go out as server-sent events as the engine releases them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.serve import api
from rlhfkit.serve.engine import Chunk, Engine, Request, RequestError, join


def create_app(engine: Engine, model_id: str, api_key: str | None = None) -> FastAPI:
    """The app serving ``engine`` as the model ``model_id``; ``api_key``: the bearer token every
    request must carry (None: open)."""
    app = FastAPI(title="rlhfkit serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def check_api_key(request: HTTPRequest, call_next: Any) -> Response:
        if api_key is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), api_key.encode()
            ):
                return failure(
                    401,
                    "incorrect API key: send it as the header 'Authorization: Bearer KEY'",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: HTTPRequest, e: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {e.detail}"
        return failure(e.status_code, message, "invalid_request_error")

    @app.exception_handler(api.BadRequest)
    async def bad_request(request: HTTPRequest, e: api.BadRequest) -> Response:
        return failure(400, str(e), "invalid_request_error", e.param, e.code)

    @app.exception_handler(RequestError)
    async def unservable(request: HTTPRequest, e: RequestError) -> Response:
        return failure(400, str(e), "invalid_request_error", e.param, e.code)

    @app.exception_handler(Exception)
    async def engine_failure(request: HTTPRequest, e: Exception) -> Response:
        return failure(500, f"the engine failed: {type(e).__name__}: {e}", "server_error")

    @app.get("/v1/models")
    async def models() -> dict:
        return api.model_list(model_id, created)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Response:
        body = await read(request, api.CompletionBody, model_id)
        assert isinstance(body, api.CompletionBody)
        wanted = body.logprobs is not None
        if body.stream:
            chunks = await started(engine, body.requests()[0])
            return sse(stream_completion(chunks, model_id, wanted, body.include_usage()))
        results = await asyncio.gather(
            *(run_in_threadpool(whole, engine, each) for each in body.requests())
        )
        return JSONResponse(api.completion(model_id, list(results), wanted))

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest) -> Response:
        body = await read(request, api.ChatBody, model_id)
        assert isinstance(body, api.ChatBody)
        if body.stream:
            chunks = await started(engine, body.request())
            return sse(stream_chat(chunks, model_id, body.logprobs, body.include_usage()))
        result = await run_in_threadpool(whole, engine, body.request())
        return JSONResponse(api.chat_completion(model_id, result, body.logprobs))

    return app


def failure(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(api.error(message, kind, param, code), status_code=status)


async def read(request: HTTPRequest, body_type: type[api.Body], model_id: str) -> api.Body:
    """The request's JSON body, validated; a 400 (404 for another model) when it is not right."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise api.BadRequest(f"the body is not valid JSON ({e})") from None
    body = api.parse(body_type, data)
    if body.model != model_id:
        raise HTTPException(404, f"the model {body.model!r} is not served here; use {model_id!r}")
    return body


def whole(engine: Engine, request: Request) -> Chunk:
    return join(engine.stream(request))


async def started(engine: Engine, request: Request) -> tuple[Chunk, Iterator[Chunk]]:
    """A stream's first chunk and the rest: the engine refuses a request before its first chunk,
    so a refusal is still a 400, not a broken stream."""
    chunks = engine.stream(request)
    first = await run_in_threadpool(next, chunks, None)
    if first is None:
        raise RuntimeError("the engine ended a stream without its last chunk")
    return first, chunks


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


async def each_chunk(started: tuple[Chunk, Iterator[Chunk]]) -> AsyncIterator[Chunk]:
    first, rest = started
    yield first
    async for chunk in iterate_in_threadpool(rest):
        yield chunk


async def stream_completion(
    started: tuple[Chunk, Iterator[Chunk]], model_id: str, logprobs: bool, usage: bool
) -> AsyncIterator[dict]:
    reply_id, sent = api.new_id("cmpl"), 0
    last = started[0]
    async for chunk in each_chunk(started):
        yield api.completion_chunk(reply_id, model_id, chunk, logprobs, sent)
        sent += len(chunk.text)
        last = chunk
    if usage:
        yield api.usage_chunk(reply_id, model_id, "text_completion", last)


async def stream_chat(
    started: tuple[Chunk, Iterator[Chunk]], model_id: str, logprobs: bool, usage: bool
) -> AsyncIterator[dict]:
    reply_id = api.new_id("chatcmpl")
    yield api.chat_chunk(reply_id, model_id, {"role": "assistant", "content": ""}, None, None)
    last = started[0]
    async for chunk in each_chunk(started):
        if chunk.text or chunk.tokens:
            shown = api.chat_logprobs(chunk.tokens) if logprobs else None
            yield api.chat_chunk(reply_id, model_id, {"content": chunk.text}, shown, None)
        last = chunk
    yield api.chat_chunk(reply_id, model_id, {}, None, last.finish_reason)
    if usage:
        yield api.usage_chunk(reply_id, model_id, "chat.completion.chunk", last)
