"""What a gateway agent runs beside its Envoy for Kong's logging and metrics plugins:

* the log forwarder of tcp-log and http-log (:mod:`isthmus.gateway.log_forwarder`) on a free loopback port,
  named in the bootstrap as the static cluster the plugins' gRPC access logs send to;
* with ``--status-listen HOST:PORT``, Kong's Status API ``GET /metrics``, computed on each scrape from Envoy's
  admin API: the prometheus plugin's metrics from ``/stats/prometheus`` renamed as Kong's
  (:mod:`isthmus.gateway.kong_metrics`), Kong's node-level metrics from the same stats
  (:mod:`isthmus.gateway.kong_node_metrics`) and, when the control plane sent the upstream-health cluster (some
  prometheus plugin has ``upstream_health_metrics`` on), ``kong_upstream_target_health`` from ``/config_dump`` and
  ``/clusters`` (:mod:`isthmus.gateway.upstream_health`); ``GET /status`` answers 200 while the agent runs;
* Kong's latency buckets for the prometheus plugin's histograms, in the bootstrap's ``stats_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from isthmus.gateway import log_forwarder, upstream_health
from isthmus.gateway.kong_metrics import kong_metrics
from isthmus.gateway.kong_node_metrics import node_metrics
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
        from isthmus.gateway.admin_api import KONG_VERSION  # the version the Admin API reports

        host, port = _split(status_listen)
        scraper = Scraper(admin_url, str(bootstrap.get("node", {}).get("id", "")), KONG_VERSION)
        server = await asyncio.start_server(_handler(scraper), host, port)
        try:
            yield
        finally:
            server.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)


def _handler(scraper: Scraper) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method != "GET":
                status, body = "405 Method Not Allowed", b'{"message":"Method not allowed"}\n'
                content_type = "application/json"
            elif path == "/metrics":
                status, body, content_type = "200 OK", (await scraper.metrics()).encode(), CONTENT_TYPE
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


class Scraper:
    """Kong's ``/metrics`` text from the gateway Envoy's admin API, read anew on each scrape."""

    def __init__(self, admin_url: Callable[[], str | None], node_id: str, version: str) -> None:
        self.admin_url = admin_url
        self.node_id = node_id
        self.version = version
        self.errors = 0  # scrapes that could not read Envoy's admin API (kong_nginx_metric_errors_total)

    async def metrics(self) -> str:
        admin = self.admin_url()
        if admin is None:
            return ""
        async with httpx.AsyncClient(base_url=admin, timeout=5.0) as client:
            try:
                stats = await _get(client, "/stats/prometheus", {"usedonly": ""})
            except httpx.HTTPError as exc:
                self.errors += 1
                log.warning("Kong metrics: Envoy's admin API: %s", exc)
                return ""
            try:
                health = await _upstream_health(client)
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: an admin answer that is not JSON
                self.errors += 1
                log.warning("Kong metrics: upstream health from Envoy's admin API: %s", exc)
                health = ""
        node = node_metrics(stats, self.node_id, self.version, self.errors)
        return kong_metrics(stats) + health + node


async def _get(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> str:
    response = await client.get(path, params=params)
    response.raise_for_status()
    return response.text


async def _upstream_health(client: httpx.AsyncClient) -> str:
    """``kong_upstream_target_health`` when the control plane sent the upstream-health cluster, else ""."""
    dump = await _get(
        client,
        "/config_dump",
        {"resource": "dynamic_active_clusters", "name_regex": "^kong:.*:upstream-health$"},
    )
    marked = upstream_health.upstreams(dump)
    if marked is None:
        return ""
    clusters = await _get(client, "/clusters", {"format": "json"})
    return upstream_health.render(upstream_health.samples(marked, clusters))
