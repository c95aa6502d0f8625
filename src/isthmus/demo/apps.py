"""Small real servers used by the demo, the end-to-end tests and the benchmarks.

* :func:`echo_app` is an ASGI app answering every request with JSON naming the service, its version and the
  instance; with ``upstream`` set it first calls that URL (through the caller's sidecar), forwarding the trace
  headers (:data:`TRACE_HEADERS`), and nests the answer.
  Paths that make it misbehave on purpose, for resilience tests and demos: ``/status/<code>`` answers that
  status; ``/delay/<ms>`` answers after that delay; ``/flaky`` fails every other request with 503; ``/health``
  answers 200 or 503 as set by ``POST /admin/health/ok`` and ``POST /admin/health/fail``; with ``fail_all``
  every request but ``/health`` and ``/admin/...`` answers 503.
* :func:`start_tcp_echo` is a TCP server that writes back what it reads, prefixed with a banner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
# What an application forwards from the request it serves to the requests it makes, so that the mesh's tracing
# (MeshTrace: B3 for Zipkin, W3C trace context for OpenTelemetry) joins them into one trace.
TRACE_HEADERS = frozenset(
    {
        "x-request-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "b3",
        "traceparent",
        "tracestate",
    }
)
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def echo_app(
    service: str, version: str = "v1", instance: str = "", upstream: str = "", fail_all: bool = False
) -> Any:
    client: httpx.AsyncClient | None = None
    state = {"healthy": True, "flaky": 0}

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
        status = _misbehave(scope.get("path", "/"), scope.get("method", "GET"), state, fail_all)
        if status == 0:
            await asyncio.sleep(int(scope["path"].rsplit("/", 1)[1]) / 1000)
            status = 200
        body["headers"] = {k: v for k, v in headers.items() if k.startswith("x-")}
        if upstream and status == 200:
            if client is None:
                client = httpx.AsyncClient(timeout=10.0)
            try:
                forwarded = {k: v for k, v in headers.items() if k in TRACE_HEADERS}
                resp = await client.get(upstream + scope.get("path", "/"), headers=forwarded)
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


def _misbehave(path: str, method: str, state: dict[str, Any], fail_all: bool) -> int:
    """The status to answer with for a test path (0: delay first, then 200)."""
    if path.startswith("/admin/health/") and method == "POST":
        state["healthy"] = path.endswith("/ok")
        return 200
    if path == "/health":
        return 200 if state["healthy"] else 503
    if fail_all:
        return 503
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
        return int(parts[1])
    if len(parts) == 2 and parts[0] == "delay" and parts[1].isdigit():
        return 0
    if path == "/flaky":
        state["flaky"] += 1
        return 503 if state["flaky"] % 2 else 200
    return 200


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
