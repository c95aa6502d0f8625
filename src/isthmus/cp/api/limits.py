"""A request body limit for the REST API, as a pure ASGI middleware.

A request whose ``Content-Length`` is over the limit is answered 413 at once, before any of its body is read;
a body sent without a length (chunked) is counted as it arrives and refused as soon as it passes the limit.
The application only ever sees bodies within the limit: the middleware reads the body first (at most the
limit, 1 MiB by default) and hands it on in one piece.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isthmus.resources.loading import MAX_DOCUMENT_BYTES

DEFAULT_MAX_BODY_BYTES = MAX_DOCUMENT_BYTES  # 1 MiB


class _Disconnected(Exception):
    """The client went away while its body was being read."""


class BodyLimitMiddleware:
    """Answer 413 (with the API's JSON error body) to any HTTP request whose body is over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.drain_limit = max(8 * max_body_bytes, 8 * MAX_DOCUMENT_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        length = _integer(headers.get(b"content-length"))
        try:
            if length is not None and length > self.max_body_bytes:
                if b"expect" not in headers:  # a client waiting for 100-continue has sent nothing
                    await self._drain(receive, length)
                await self._refuse(send, f"the request body is {length} bytes")
                return
            body, finished = await self._read(receive)
            if body is None:
                if not finished:
                    await self._drain(receive, 0)
                await self._refuse(send, "the request body is larger than that")
                return
        except _Disconnected:
            return
        await self.app(scope, replay_body(body, receive), send)

    async def _drain(self, receive: Receive, length: int) -> None:
        """Read (and drop) a refused body of moderate size, so that the client, still sending, reads the 413
        instead of a reset connection; a huge one is not waited for (the connection is closed after the 413)."""
        if length > self.drain_limit:
            return
        size = 0
        while size <= self.drain_limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _read(self, receive: Receive) -> tuple[bytes | None, bool]:
        """(the whole body, or None once it passes the limit; whether the client has sent all of it)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, not more
            chunks.append(chunk)
            if not more:
                return b"".join(chunks), True

    async def _refuse(self, send: Send, what: str) -> None:
        detail = f"{what}; the limit is {self.max_body_bytes} bytes"
        body = json.dumps({"title": "Request body too large", "status": 413, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _integer(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over the buffered body once, then the real one (for disconnects); the ASGI
    middlewares that read a body before the route use it."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
