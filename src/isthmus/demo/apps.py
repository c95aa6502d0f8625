"""Small real servers used by the demo, the end-to-end tests and the benchmarks.

* :func:`echo_app` is an ASGI app answering every request with JSON naming the service, its version and the
  instance; with ``upstream`` set it first calls that URL (through the caller's sidecar) and nests the answer.
* :func:`start_tcp_echo` is a TCP server that writes back what it reads, prefixed with a banner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def echo_app(service: str, version: str = "v1", instance: str = "", upstream: str = "") -> Any:
    client: httpx.AsyncClient | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal client
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if client is not None:
                        await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        body: dict[str, Any] = {
            "service": service,
            "version": version,
            "instance": instance or service,
            "path": scope.get("path", "/"),
            "method": scope.get("method", "GET"),
            "caller": headers.get("x-forwarded-client-cert", ""),
        }
        status = 200
        if upstream:
            if client is None:
                client = httpx.AsyncClient(timeout=10.0)
            try:
                resp = await client.get(upstream + scope.get("path", "/"))
                body["upstream"] = {"status": resp.status_code, "body": _json_or_text(resp)}
                status = resp.status_code if resp.status_code >= 400 else 200
            except httpx.HTTPError as exc:
                body["upstream"] = {"status": 0, "error": str(exc)}
                status = 502
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


async def start_tcp_echo(host: str, port: int, banner: str) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(banner.encode() + b":" + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
