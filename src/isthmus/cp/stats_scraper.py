"""The control plane's view of its data planes' traffic, for the web UI: request rate, error rate and p99 per
service, and who calls whom.

The scraper reads each online proxy's Envoy statistics from its admin endpoint (``/stats?format=json``, filtered
to the few counters and one histogram used here) at ``networking.admin.port`` of its Dataplane: on loopback when
the Dataplane's address is one of this host's (the agent binds the admin to 127.0.0.1), else on that address. It runs only while someone looks: every read of its results (:meth:`touch`)
keeps it going for :data:`IDLE_AFTER` seconds. It is bounded: at most :data:`MAX_PROXIES` proxies per round,
:data:`CONCURRENCY` requests at a time, :data:`TIMEOUT` seconds and :data:`MAX_BODY` bytes per answer, and it keeps
only the last two samples of each proxy.

Which statistics (the names the translators give):

* ``http.inbound_<port>.downstream_rq_{total,5xx,time}``: a sidecar's HTTP inbound, the service of that inbound;
* ``http.kong_[https_]<port>.downstream_rq_{total,5xx,time}``: a gateway's Kong listeners, the gateway's service;
* ``cluster.<name>.upstream_rq_{total,5xx}`` and ``upstream_cx_total``: a cluster of the proxy's IR that leads
  to a mesh service (``Cluster.service``): an edge of the topology from the proxy's service to that service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from isthmus.ir.model import ProxyIR

if TYPE_CHECKING:
    from isthmus.cp.insights import Insights
    from isthmus.cp.reconciler import Reconciler
    from isthmus.store.base import ResourceStore

log = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between two rounds
IDLE_AFTER = 60.0  # no round once nobody has read the results for this long
MAX_PROXIES = 500
CONCURRENCY = 8
TIMEOUT = 2.0
MAX_BODY = 4 * 1024 * 1024
STATS_FILTER = (
    r"^(http\.(inbound|kong)_[a-z0-9_]+\.downstream_rq_(total|5xx|time)"
    r"|cluster\..+\.(upstream_rq_total|upstream_rq_5xx|upstream_cx_total))$"
)
_LISTENER = re.compile(r"^http\.(inbound_\d+|kong_(?:https_)?\d+)\.downstream_rq_(total|5xx|time)$")
_CLUSTER = re.compile(r"^cluster\.(.+)\.(upstream_rq_total|upstream_rq_5xx|upstream_cx_total)$")


# -- what one answer holds -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvoyStats:
    """The counters and the p99 (milliseconds) of the histograms of one ``/stats?format=json`` answer."""

    counters: Mapping[str, int]
    p99: Mapping[str, float]


def parse_stats(doc: Any) -> EnvoyStats:
    """Envoy's JSON stats: ``{"stats": [{"name", "value"}..., {"histograms": {"supported_quantiles": [...],
    "computed_quantiles": [{"name", "values": [{"interval", "cumulative"}...]}]}}]}``. The p99 is the last
    interval's when it had samples, else the cumulative one. Raises ValueError for another shape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("stats"), list):
        raise ValueError("not Envoy's JSON stats: no 'stats' list")
    counters: dict[str, int] = {}
    p99: dict[str, float] = {}
    for entry in doc["stats"]:
        if not isinstance(entry, dict):
            continue
        if "histograms" in entry:
            hist = entry["histograms"]
            if not isinstance(hist, dict):
                continue
            quantiles = hist.get("supported_quantiles") or []
            if 99 not in quantiles and 99.0 not in quantiles:
                continue
            index = [float(q) for q in quantiles].index(99.0)
            for computed in hist.get("computed_quantiles") or []:
                values = computed.get("values") or [] if isinstance(computed, dict) else []
                if index >= len(values) or not isinstance(values[index], dict):
                    continue
                value = values[index].get("interval")
                if value is None:
                    value = values[index].get("cumulative")
                if isinstance(value, int | float):
                    p99[str(computed.get("name"))] = float(value)
            continue
        name, value = entry.get("name"), entry.get("value")
        if isinstance(name, str) and isinstance(value, int) and not isinstance(value, bool):
            counters[name] = value
    return EnvoyStats(counters, p99)


# -- what the scraper reads of a proxy ------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One proxy to scrape: its admin URL and how its stat names map to services."""

    node_id: str
    mesh: str
    name: str
    url: str  # http://host:port of its Envoy admin
    service: str  # its own service (its first inbound's, or its gateway's)
    gateway: bool
    listeners: Mapping[str, str]  # stat prefix (inbound_20001, kong_8080) -> service
    clusters: Mapping[str, str]  # cluster stat name -> destination service


def stat_name(cluster: str) -> str:
    """The name of a cluster in Envoy's stats (Envoy writes ``:`` as ``_``)."""
    return cluster.replace(":", "_")


@functools.lru_cache(maxsize=1024)
def is_local_address(address: str) -> bool:
    """Whether ``address`` is one of this host's (a socket can bind to it): a data plane on this host, whose Envoy
    admin listens on loopback only."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return address == "localhost"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def target_for(node_id: str, record_spec: Mapping[str, Any], ir: ProxyIR | None) -> Target | None:
    """The target of a proxy from its Dataplane (address, admin port) and its IR; None without an admin port."""
    net = record_spec.get("networking") or {}
    admin = net.get("admin") or {}
    port = admin.get("port") if isinstance(admin, dict) else None
    address = net.get("address")
    if not isinstance(port, int) or not isinstance(address, str) or not address:
        return None
    host = "127.0.0.1" if is_local_address(address) else address  # the agent's admin is on loopback
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    mesh, _, name = node_id.partition(".")
    gateway = net.get("gateway")
    listeners: dict[str, str] = {}
    service = ""
    if isinstance(gateway, dict):
        service = str((gateway.get("tags") or {}).get("kuma.io/service", ""))
    for inbound in ir.inbounds if ir is not None else ():
        listeners[f"inbound_{inbound.port}"] = inbound.service
        service = service or inbound.service
    if not service:
        for inbound in net.get("inbound") or []:
            service = str(((inbound or {}).get("tags") or {}).get("kuma.io/service", ""))
            if service:
                break
    clusters = {stat_name(c.name): c.service for c in (ir.clusters if ir is not None else ()) if c.service}
    return Target(
        node_id=node_id,
        mesh=mesh,
        name=name,
        url=f"http://{host}:{port}",
        service=service or name,
        gateway=isinstance(gateway, dict),
        listeners=listeners,
        clusters=clusters,
    )


# -- rates ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    stats: EnvoyStats


@dataclass(frozen=True)
class Traffic:
    """Requests per second and cumulative counts (since the proxy's Envoy started)."""

    request_rate: float = 0.0
    error_rate: float = 0.0  # 5xx per second
    connection_rate: float = 0.0
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None


def _delta(now: int, before: int | None) -> int:
    if before is None:
        return 0
    return now - before if now >= before else now  # a restarted Envoy counts from zero again


def _traffic(
    current: Sample, previous: Sample | None, total: str, errors: str, p99: str | None = None, cx: str = ""
) -> Traffic:
    c = current.stats.counters
    p = previous.stats.counters if previous is not None else {}
    dt = current.at - previous.at if previous is not None else 0.0

    def rate(name: str) -> float:
        if not name or dt <= 0 or name not in c:
            return 0.0
        return _delta(c[name], p.get(name)) / dt

    return Traffic(
        request_rate=rate(total),
        error_rate=rate(errors),
        connection_rate=rate(cx),
        requests=c.get(total, 0),
        errors=c.get(errors, 0),
        p99_ms=current.stats.p99.get(p99) if p99 else None,
    )


@dataclass(frozen=True)
class ProxyTraffic:
    target: Target
    inbound: Mapping[str, Traffic]  # service -> traffic it received (summed over the proxy's listeners)
    outbound: Mapping[str, Traffic]  # destination service -> traffic the proxy sent to it


def _sum(items: Iterable[Traffic]) -> Traffic:
    items = list(items)
    p99s = [t.p99_ms for t in items if t.p99_ms is not None]
    return Traffic(
        request_rate=sum(t.request_rate for t in items),
        error_rate=sum(t.error_rate for t in items),
        connection_rate=sum(t.connection_rate for t in items),
        requests=sum(t.requests for t in items),
        errors=sum(t.errors for t in items),
        p99_ms=max(p99s) if p99s else None,  # an upper bound: quantiles do not add up
    )


def proxy_traffic(target: Target, current: Sample, previous: Sample | None) -> ProxyTraffic:
    inbound: dict[str, list[Traffic]] = {}
    for prefix, service in target.listeners.items():
        base = f"http.{prefix}.downstream_rq_"
        inbound.setdefault(service, []).append(
            _traffic(current, previous, base + "total", base + "5xx", base + "time")
        )
    if target.gateway:  # Kong's listeners: the gateway's service
        prefixes = {m.group(1) for n in current.stats.counters if (m := _LISTENER.match(n))}
        for prefix in sorted(p for p in prefixes if p.startswith("kong_")):
            base = f"http.{prefix}.downstream_rq_"
            inbound.setdefault(target.service, []).append(
                _traffic(current, previous, base + "total", base + "5xx", base + "time")
            )
    outbound: dict[str, list[Traffic]] = {}
    for cluster, service in target.clusters.items():
        base = f"cluster.{cluster}."
        if base + "upstream_rq_total" not in current.stats.counters and (
            base + "upstream_cx_total" not in current.stats.counters
        ):
            continue
        outbound.setdefault(service, []).append(
            _traffic(
                current,
                previous,
                base + "upstream_rq_total",
                base + "upstream_rq_5xx",
                cx=base + "upstream_cx_total",
            )
        )
    return ProxyTraffic(
        target,
        {s: _sum(t) for s, t in inbound.items()},
        {s: _sum(t) for s, t in outbound.items()},
    )


# -- aggregation per mesh -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceTraffic:
    service: str
    instances: int  # proxies of the service that answered the last round
    traffic: Traffic


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    traffic: Traffic


def services(proxies: Iterable[ProxyTraffic]) -> list[ServiceTraffic]:
    by_service: dict[str, list[Traffic]] = {}
    instances: dict[str, int] = {}
    for proxy in proxies:
        for service, traffic in proxy.inbound.items():
            by_service.setdefault(service, []).append(traffic)
            instances[service] = instances.get(service, 0) + 1
    return [ServiceTraffic(s, instances[s], _sum(t)) for s, t in sorted(by_service.items())]


def edges(proxies: Iterable[ProxyTraffic]) -> list[Edge]:
    by_pair: dict[tuple[str, str], list[Traffic]] = {}
    for proxy in proxies:
        for destination, traffic in proxy.outbound.items():
            by_pair.setdefault((proxy.target.service, destination), []).append(traffic)
    return [Edge(s, d, _sum(t)) for (s, d), t in sorted(by_pair.items())]


# -- the scraper ----------------------------------------------------------------------------------------------
TargetSource = Callable[[], Any]  # async () -> list[Target]


@dataclass
class _Proxy:
    target: Target
    current: Sample
    previous: Sample | None = None


@dataclass
class StatsScraper:
    """Scrapes while someone reads (see the module docstring). ``targets`` is an async callable listing the
    online proxies to scrape."""

    targets: TargetSource
    interval: float = INTERVAL
    idle_after: float = IDLE_AFTER
    max_proxies: int = MAX_PROXIES
    _proxies: dict[str, _Proxy] = field(default_factory=dict)
    _failures: dict[str, str] = field(default_factory=dict)
    _last_read: float = -1e18
    _last_round: float | None = None  # wall-clock time of the last round
    _wanted: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Someone reads the results: keep scraping for ``idle_after`` seconds."""
        self._last_read = time.monotonic()
        self._wanted.set()

    @property
    def last_round(self) -> float | None:
        return self._last_round

    def failures(self, mesh: str) -> dict[str, str]:
        """Proxies of ``mesh`` whose last scrape failed: name -> reason."""
        return {
            nid.partition(".")[2]: why for nid, why in self._failures.items() if nid.startswith(mesh + ".")
        }

    def traffic(self, mesh: str) -> list[ProxyTraffic]:
        return [
            proxy_traffic(p.target, p.current, p.previous)
            for nid, p in sorted(self._proxies.items())
            if p.target.mesh == mesh
        ]

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            while True:
                await self._wanted.wait()
                if time.monotonic() - self._last_read > self.idle_after:
                    self._wanted.clear()  # nobody looks: the samples get stale, rates restart next time
                    self._proxies.clear()
                    continue
                await self.scrape_once(client)
                await asyncio.sleep(self.interval)

    async def scrape_once(self, client: httpx.AsyncClient) -> None:
        targets: list[Target] = list(await self.targets())[: self.max_proxies]
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(target: Target) -> tuple[Target, EnvoyStats | str]:
            async with limit:
                try:
                    return target, await fetch_stats(client, target.url)
                except (httpx.HTTPError, ValueError) as exc:
                    return target, f"{type(exc).__name__}: {exc}"[:300]

        results = await asyncio.gather(*(one(t) for t in targets))
        now = time.monotonic()
        seen = set()
        for target, result in results:
            seen.add(target.node_id)
            if isinstance(result, str):
                self._failures[target.node_id] = result
                self._proxies.pop(target.node_id, None)
                continue
            self._failures.pop(target.node_id, None)
            before = self._proxies.get(target.node_id)
            self._proxies[target.node_id] = _Proxy(
                target, Sample(now, result), before.current if before is not None else None
            )
        for nid in [n for n in self._proxies if n not in seen]:
            del self._proxies[nid]
        for nid in [n for n in self._failures if n not in seen]:
            del self._failures[nid]
        self._last_round = time.time()


async def fetch_stats(client: httpx.AsyncClient, url: str) -> EnvoyStats:
    """One proxy's filtered stats (at most :data:`MAX_BODY` bytes)."""
    params = {"format": "json", "usedonly": "", "filter": STATS_FILTER}
    async with client.stream("GET", f"{url}/stats", params=params) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY:
                raise ValueError(f"the stats are larger than {MAX_BODY} bytes")
    return parse_stats(json.loads(body))


async def online_targets(
    store: ResourceStore, insights: Insights, reconciler: Reconciler, limit: int = MAX_PROXIES
) -> list[Target]:
    """The proxies with an ADS stream open to this control plane, as targets (at most ``limit``)."""
    from isthmus.xds.node import node_id_or_none

    found: list[Target] = []
    for record in (await store.list("Dataplane")).items:
        nid = node_id_or_none(record.mesh, record.name)
        node = insights.nodes.get(nid) if nid else None
        if nid is None or node is None or not node.online:
            continue
        proxy = reconciler.proxies.get(nid)
        target = target_for(nid, record.spec, proxy.ir if proxy is not None else None)
        if target is not None:
            found.append(target)
            if len(found) >= limit:
                break
    return found
