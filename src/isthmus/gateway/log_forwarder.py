"""The gateway agent's log forwarder for Kong's tcp-log and http-log: Envoy's gRPC access-log service
(``envoy.service.accesslog.v3``) on loopback, writing Kong's JSON to the plugins' targets, off the request path.

Envoy streams each access log's entries with the log name once per stream; the log name is the plugin and its
configuration (:func:`isthmus.gateway.plugins.tcp_log.log_name`), so the forwarder needs no other configuration.
Each configuration has one sink, shared by Envoy's streams:

* tcp-log: newline-delimited JSON over one TCP (or TLS, ``tls_sni``, the peer unverified as Kong) connection,
  opened on demand within ``timeout``, closed after ``keepalive`` idle; an entry that cannot be written after a
  reconnect is dropped and logged, as Kong does.
* http-log: Kong's queue: up to ``max_entries`` waiting (the oldest dropped beyond), batches of up to
  ``max_batch_size`` sent ``max_coalescing_delay`` after the first entry, a batch of one as a JSON object and
  larger ones as an array; a failed send (an error or a status >= 400) retried after ``initial_retry_delay``,
  doubling up to ``max_retry_delay``, until ``max_retry_time`` has passed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from isthmus.gateway.plugins import http_log, kong_log, tcp_log

log = logging.getLogger(__name__)
CLUSTER = tcp_log.FORWARDER_CLUSTER


class TcpSink:
    def __init__(self, config: tcp_log.Config) -> None:
        self.config = config
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)
        self.task = asyncio.ensure_future(self._run())

    def put(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(line)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        c = self.config
        context: ssl.SSLContext | None = None
        if c.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return await asyncio.wait_for(
            asyncio.open_connection(
                c.host, c.port, ssl=context, server_hostname=(c.tls_sni or c.host) if c.tls else None
            ),
            c.timeout / 1000,
        )

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                try:
                    line = await asyncio.wait_for(self.queue.get(), self.config.keepalive / 1000)
                except TimeoutError:
                    writer = await _close(writer)
                    continue
                for attempt in (1, 2):
                    try:
                        if writer is None:
                            _, writer = await self._connect()
                        writer.write(line)
                        await asyncio.wait_for(writer.drain(), self.config.timeout / 1000)
                        break
                    except (OSError, TimeoutError) as exc:
                        writer = await _close(writer)
                        if attempt == 2:
                            log.warning("tcp-log %s:%d: %s", self.config.host, self.config.port, exc)
        finally:
            await _close(writer)


async def _close(writer: asyncio.StreamWriter | None) -> asyncio.StreamWriter | None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)
    return None


class HttpSink:
    def __init__(self, config: http_log.Config) -> None:
        self.config = config
        q = config.queue
        self.entries: deque[dict[str, Any]] = deque(maxlen=q.max_entries)
        self.ready = asyncio.Event()
        parts = urlsplit(config.http_endpoint)
        self.url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))
        self.headers = {"content-type": config.content_type, **(config.headers or {})}
        if parts.username is not None:
            auth = f"{parts.username}:{parts.password or ''}".encode()
            self.headers["authorization"] = "Basic " + base64.b64encode(auth).decode()
        self.client = httpx.AsyncClient(
            timeout=config.timeout / 1000,
            verify=bool(config.ssl_verify),
            limits=httpx.Limits(keepalive_expiry=config.keepalive / 1000),
        )
        self.task = asyncio.ensure_future(self._run())

    def put(self, entry: dict[str, Any]) -> None:
        if len(self.entries) == self.entries.maxlen:
            log.warning("http-log %s: queue full, dropping the oldest entry", self.url)
        self.entries.append(entry)
        self.ready.set()

    async def _run(self) -> None:
        q = self.config.queue
        try:
            while True:
                await self.ready.wait()
                deadline = time.monotonic() + q.max_coalescing_delay
                while len(self.entries) < q.max_batch_size and time.monotonic() < deadline:
                    self.ready.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ready.wait(), max(deadline - time.monotonic(), 0))
                batch = [self.entries.popleft() for _ in range(min(q.max_batch_size, len(self.entries)))]
                if not self.entries:
                    self.ready.clear()
                if batch:
                    await self._send(batch)
        finally:
            await self.client.aclose()

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        q = self.config.queue
        body = json.dumps(batch[0] if q.max_batch_size == 1 else batch, separators=(",", ":"))
        started = time.monotonic()
        delay = q.initial_retry_delay
        while True:
            try:
                response = await self.client.request(
                    self.config.method, self.url, content=body, headers=self.headers
                )
                if response.status_code < 400:
                    return
                problem = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            if time.monotonic() - started + delay > q.max_retry_time:
                log.warning("http-log %s: %s; %d entries dropped", self.url, problem, len(batch))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, q.max_retry_delay)


Sink = TcpSink | HttpSink


def sink_for(log_name: str) -> Sink:
    spec = json.loads(log_name)
    if spec.get("plugin") == tcp_log.NAME:
        return TcpSink(tcp_log.Config.model_validate(spec["config"]))
    if spec.get("plugin") == http_log.NAME:
        return HttpSink(http_log.Config.model_validate(spec["config"]))
    raise ValueError(f"unknown log {spec.get('plugin')!r}")


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        sink: Sink | None = None
        async for message in request_iterator:
            if sink is None:
                name = message.identifier.log_name
                try:
                    sink = self.sinks.get(name) or self.sinks.setdefault(name, sink_for(name))
                except (ValueError, KeyError) as exc:
                    log.warning("log forwarder: log %r refused: %s", name[:200], exc)
                    return als_pb2.StreamAccessLogsResponse()
            for entry in message.http_logs.log_entry:
                sink.put(kong_log.serialize(entry))
        return als_pb2.StreamAccessLogsResponse()

    async def close(self) -> None:
        tasks = [s.task for s in self.sinks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


@dataclass
class Running:
    host: str
    port: int


@contextlib.asynccontextmanager
async def serving(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Running]:
    """The forwarder on ``host:port`` (0: a free port) for the life of the context."""
    service = AccessLogService()
    server = grpc.aio.server()
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"log forwarder: cannot listen on {host}:{port}")
    await server.start()
    try:
        yield Running(host, bound)
    finally:
        await asyncio.shield(_stop(server, service))


async def _stop(server: grpc.aio.Server, service: AccessLogService) -> None:
    await server.stop(grace=1.0)
    await service.close()


def cluster(host: str, port: int) -> dict[str, Any]:
    """The gateway bootstrap's static cluster for the forwarder (HTTP/2, loopback)."""
    return {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
    }
