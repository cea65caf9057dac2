"""What the studio takes from a client, checked before anything reaches the store.

- A request body of at most ``max_body_bytes`` (``BodyLimit``): refused with 413 by its
  ``Content-Length`` before a route reads a byte, or, for a body sent in chunks, as soon as the
  count passes the limit. The default, 1 MiB, holds a correction of a long model output with
  room to spare.
- Label texts (critique, correction) of at most ``max_text_chars`` characters each
  (``check_text_sizes``): a person writes paragraphs, not megabytes.
- Task ids as ASCII digits naming a signed 64-bit integer (``task_number``): ``str.isdigit``
  also takes ``²`` (which ``int`` refuses) and ``١`` (which ``int`` reads as 1), and a larger
  number overflows the database driver.

Both limits are ``rlhfkit label serve`` options.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhfkit.feedback.payload import ID_MAX, PayloadError

MAX_BODY_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 50_000
TEXT_FIELDS = ("critique", "correction")
_ASCII_NUMBER = re.compile(r"[0-9]{1,19}")  # 19 digits reach past 2**63 - 1


def task_number(value: Any) -> int | None:
    """``value`` (a JSON integer, or form text of ASCII digits) as a task id, or None if it is
    not one: a bool, a negative or zero, non-ASCII digits, or beyond a signed 64-bit id."""
    if isinstance(value, str) and _ASCII_NUMBER.fullmatch(value):
        value = int(value)
    if type(value) is int and 0 < value <= ID_MAX:
        return value
    return None


def check_text_sizes(payload: Any, max_chars: int) -> Any:
    """``payload`` unchanged if none of its texts is longer than ``max_chars`` characters."""
    if isinstance(payload, Mapping):
        for field in TEXT_FIELDS:
            text = payload.get(field)
            if isinstance(text, str) and len(text) > max_chars:
                raise PayloadError(
                    f"label field {field!r} is {len(text):,} characters; the "
                    f"studio takes at most {max_chars:,} (label serve "
                    "--max_text_chars): shorten it"
                )
    return payload


class BodyLimit:
    """ASGI middleware that refuses a request body over ``max_bytes`` with ``refuse(request,
    reason)``'s response, so no route parses (or the store keeps) an oversized body."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        refuse: Callable[[Request, str], Response | Awaitable[Response]],
    ):
        self.app, self.max_bytes, self.refuse = app, max_bytes, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send, f"{int(length):,} bytes")
                return
            await self.app(scope, receive, send)  # the server holds the body to its length
            return
        # Chunked (no length given): hold the body, at most max_bytes, then hand it on whole.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"over {self.max_bytes:,} bytes")
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        reason = (
            f"the request body is {size}; the studio takes at most {self.max_bytes:,} "
            "(label serve --max_body_bytes): send less text"
        )
        response = self.refuse(Request(scope), reason)
        if not isinstance(response, Response):
            response = await response
        await response(scope, receive, send)
