"""What a gateway agent runs beside its Envoy for Kong's logging and metrics plugins:

* the log forwarder of tcp-log and http-log (:mod:`isthmus.gateway.log_forwarder`) on a free loopback port,
  named in the bootstrap as the static cluster the plugins' gRPC access logs send to;
* with ``--status-listen HOST:PORT``, Kong's Status API ``GET /metrics``: the prometheus plugin's metrics, read
  from Envoy's admin ``/stats/prometheus`` on each scrape and renamed as Kong's (:mod:`isthmus.gateway.kong_metrics`);
  ``GET /status`` answers 200 while the agent runs;
* Kong's latency buckets for the prometheus plugin's histograms, in the bootstrap's ``stats_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from isthmus.gateway import log_forwarder
from isthmus.gateway.kong_metrics import kong_metrics
from isthmus.gateway.plugins.prometheus import LATENCY_BUCKETS, STAT_PREFIX

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def serving(
    enabled: bool, bootstrap: dict[str, Any], status_listen: str | None, admin_url: Callable[[], str | None]
) -> AsyncIterator[None]:
    """The forwarder and the status endpoint for the life of the context (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    stats = bootstrap.setdefault("stats_config", {})
    stats.setdefault("histogram_bucket_settings", []).append(
        {"match": {"prefix": f"{STAT_PREFIX}."}, "buckets": [float(b) for b in LATENCY_BUCKETS]}
    )
    async with log_forwarder.serving("127.0.0.1", 0) as forwarder:
        bootstrap.setdefault("static_resources", {}).setdefault("clusters", []).append(
            log_forwarder.cluster(forwarder.host, forwarder.port)
        )
        if status_listen is None:
            yield
            return
        host, port = _split(status_listen)
        server = await asyncio.start_server(_handler(admin_url), host, port)
        try:
            yield
        finally:
            server.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)


def _handler(
    admin_url: Callable[[], str | None],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method != "GET":
                status, body = "405 Method Not Allowed", b'{"message":"Method not allowed"}\n'
                content_type = "application/json"
            elif path == "/metrics":
                status, body, content_type = "200 OK", (await _metrics(admin_url())).encode(), CONTENT_TYPE
            elif path == "/status":
                status, body, content_type = "200 OK", b'{"server":{}}\n', "application/json"
            else:
                status, body, content_type = "404 Not Found", b'{"message":"Not found"}\n', "application/json"
            head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            writer.write(head.encode() + b"connection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    return handle


async def _metrics(admin: str | None) -> str:
    if admin is None:
        return ""
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{admin}/stats/prometheus", params={"usedonly": ""})
            response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("Kong metrics: Envoy's admin API: %s", exc)
        return ""
    return kong_metrics(response.text)
