"""Request bodies a service can afford: bounded in size and in time.

A pure ASGI middleware, so it sees the body as it arrives: a declared ``Content-Length`` over the limit is refused
before a byte is read, a chunked body is counted as it streams, and a client that stops sending mid-body gets 408
instead of holding a parser (and an upload's temporary file) open for ever. Other clients are not slowed: each
connection waits on its own.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit >> 20} MiB limit")


class BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            refused = BodyTooLarge(self.max_bytes)
            answer = JSONResponse({"detail": refused.detail}, refused.status_code, headers={"connection": "close"})
            await answer(scope, receive, send)
            return
        received = 0
        more = True

        async def limited() -> Message:
            nonlocal received, more
            if not more:  # the body is complete: what comes next is a disconnect, which may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise BodyTooSlow(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body"))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
