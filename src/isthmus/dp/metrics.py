"""What the agent runs beside its Envoy for the observability policies.

* MeshMetric: the agent polls its dynamic configuration (``GET /meshmetric`` on the Envoy listener
  ``_isthmus:dynamicconfig``, an abstract unix socket, see :mod:`isthmus.xds.translate.observability`) and serves
  each Prometheus backend on its address, port (Kuma's default 5670) and path (``/metrics``): Envoy's stats from
  the admin API's ``/stats/prometheus`` (``usedonly`` unless ``includeUnused``), filtered by the profiles and the
  include/exclude selectors, followed by the metrics of each application listed in ``applications``; every sample
  gets the labels ``mesh``, ``service``, ``zone`` and ``instance`` (a label the sample already has is kept), and
  a sample of an Envoy cluster leading to a mesh service (``envoy_cluster_name``) gets ``destination_service``.
  Per-route samples (Envoy's ``envoy_vhost_route_*`` families, from the routes MeshHTTPRoute gives a
  ``stat_prefix``) get ``route``, Envoy's ``envoy_route`` tag, and ``destination_service`` when their virtual host
  (``envoy_virtual_host``, named after the outbound's service) is a mesh service the clusters lead to.
* MeshAccessLog Tcp backends: Envoy has no raw-TCP access logger, so its file logger writes to a FIFO that the
  agent creates before Envoy starts (``/tmp/isthmus-al-<mesh>-<name>.fifo``); each line carries its receiver
  (``address;line`` for plain formats, an ``isthmus.tcp.address`` key for JSON) and the agent sends the line to
  that address over TCP, one connection per receiver, reconnecting as needed (Kuma's kuma-dp does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from isthmus.ir.observability import MESHMETRIC_PATH, TCP_JSON_ADDRESS_KEY, dynconf_socket, tcp_log_pipe

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
SCRAPE_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Basic profile: the families that show traffic, errors, latency and health; not the admin listener's
BASIC_PREFIXES = (
    "envoy_cluster_upstream_rq",
    "envoy_cluster_upstream_cx_",
    "envoy_cluster_membership_",
    "envoy_cluster_outlier_detection_",
    "envoy_vhost_route_upstream_rq",
    "envoy_http_downstream_rq",
    "envoy_http_downstream_cx_",
    "envoy_listener_downstream_cx_",
    "envoy_tcp_",
    "envoy_server_live",
    "envoy_server_uptime",
    "envoy_server_memory_",
    "envoy_server_concurrency",
)
BASIC_EXCLUDED = ("envoy_http_admin_", "envoy_listener_admin_")


# -- configuration -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    type: str
    match: str

    def matches(self, name: str) -> bool:
        if self.type == "Prefix":
            return name.startswith(self.match)
        if self.type == "Exact":
            return name == self.match
        if self.type == "Contains":
            return self.match in name
        return re.fullmatch(self.match, name) is not None


@dataclass(frozen=True)
class Application:
    name: str
    address: str
    port: int
    path: str


@dataclass(frozen=True)
class Backend:
    address: str
    port: int
    path: str


@dataclass(frozen=True)
class MetricsConf:
    labels: tuple[tuple[str, str], ...]
    profiles: tuple[str, ...]
    clusters: tuple[tuple[str, str], ...]  # Envoy cluster -> the mesh service it leads to
    include: tuple[Selector, ...]
    exclude: tuple[Selector, ...]
    include_unused: bool
    applications: tuple[Application, ...]
    backends: tuple[Backend, ...]

    @staticmethod
    def parse(text: str) -> MetricsConf:
        doc: dict[str, Any] = json.loads(text)
        sidecar = doc.get("sidecar") or {}
        return MetricsConf(
            labels=tuple((k, v) for k, v in (doc.get("labels") or {}).items() if v),
            profiles=tuple(sidecar.get("profiles") or ("Basic",)),
            clusters=tuple((str(k), str(v)) for k, v in (doc.get("clusters") or {}).items() if v),
            include=tuple(Selector(s["type"], s["match"]) for s in sidecar.get("include") or ()),
            exclude=tuple(Selector(s["type"], s["match"]) for s in sidecar.get("exclude") or ()),
            include_unused=bool(sidecar.get("includeUnused")),
            applications=tuple(
                Application(a.get("name", ""), a["address"], int(a["port"]), a["path"])
                for a in doc.get("applications") or ()
            ),
            backends=tuple(
                Backend(b["address"], int(b["port"]), b["path"]) for b in doc.get("backends") or ()
            ),
        )


# -- Prometheus text -------------------------------------------------------------------------------------------------
def _in_profiles(name: str, profiles: tuple[str, ...]) -> bool:
    if "All" in profiles:
        return True
    if "Basic" in profiles:
        return name.startswith(BASIC_PREFIXES) and not name.startswith(BASIC_EXCLUDED)
    return False


def keeps(name: str, conf: MetricsConf) -> bool:
    """Kuma's order: the profiles, then ``exclude`` removes, then ``include`` adds back (include wins)."""
    if any(s.matches(name) for s in conf.include):
        return True
    if any(s.matches(name) for s in conf.exclude):
        return False
    return _in_profiles(name, conf.profiles)


_SAMPLE_NAME = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)")


def filter_families(text: str, conf: MetricsConf) -> str:
    """The metric families of ``text`` (Prometheus exposition format) that ``conf`` keeps, by family name (the
    name of its ``# TYPE``/``# HELP`` line, else the sample's)."""
    out: list[str] = []
    family = ""
    kept = False
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                if parts[2] != family:
                    family = parts[2]
                    kept = keeps(family, conf)
                if kept:
                    out.append(line)
            continue
        if not line.strip():
            continue
        match = _SAMPLE_NAME.match(line)
        if match is None:
            continue
        name = match.group(1)
        if not family or not name.startswith(family):
            family = name
            kept = keeps(name, conf)
        if kept:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


_LABEL_NAME = re.compile(r'(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label(name: str) -> re.Pattern[str]:
    return re.compile(rf'(?:^|,)\s*{name}\s*=\s*"((?:[^"\\]|\\.)*)"')


_CLUSTER_LABEL = _label("envoy_cluster_name")
_ROUTE_LABEL = _label("envoy_route")
_VHOST_LABEL = _label("envoy_virtual_host")
DESTINATION_LABEL = "destination_service"
ROUTE_LABEL = "route"


def relabel(
    text: str, labels: tuple[tuple[str, str], ...], clusters: tuple[tuple[str, str], ...] = ()
) -> str:
    """Every sample of ``text`` with ``labels`` added in front (those it does not have already); a sample of an
    Envoy cluster named in ``clusters`` (its ``envoy_cluster_name``) also gets ``destination_service``. A per-route
    sample (one with Envoy's ``envoy_route`` tag) gets ``route``, that tag's value, and ``destination_service``
    when its ``envoy_virtual_host`` is one of the services of ``clusters``."""
    services = dict(clusters)
    destinations = set(services.values())
    if not labels and not services and "envoy_route=" not in text:
        return text
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            out.append(line)
            continue
        match = _SAMPLE_NAME.match(line)
        if match is None:
            out.append(line)
            continue
        name = match.group(1)
        rest = line[len(name) :]
        own = ""
        if rest.startswith("{"):
            end = rest.rfind("}")
            own, rest = rest[1:end], rest[end + 1 :]
        present = set(_LABEL_NAME.findall(own))
        extra = labels
        cluster = _CLUSTER_LABEL.search(own) if services else None
        if cluster is not None and cluster.group(1) in services:
            extra = (*labels, (DESTINATION_LABEL, services[cluster.group(1)]))
        elif name.startswith("envoy_vhost_route_"):
            extra = (*labels, *_route_labels(own, destinations))
        added = ",".join(f'{k}="{_escape(v)}"' for k, v in extra if k not in present)
        joined = ",".join(part for part in (added, own) if part)
        out.append(f"{name}{{{joined}}}{rest}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _route_labels(own: str, destinations: set[str]) -> tuple[tuple[str, str], ...]:
    route = _ROUTE_LABEL.search(own)
    if route is None:
        return ()
    out = [(ROUTE_LABEL, _unescape(route.group(1)))]
    vhost = _VHOST_LABEL.search(own)
    if vhost is not None and _unescape(vhost.group(1)) in destinations:
        out.append((DESTINATION_LABEL, _unescape(vhost.group(1))))
    return tuple(out)


# -- scraping and serving ---------------------------------------------------------------------------------------------
async def scrape(client: httpx.AsyncClient, admin_url: str, conf: MetricsConf) -> str:
    params = {} if conf.include_unused else {"usedonly": ""}
    parts = []
    try:
        resp = await client.get(f"{admin_url}/stats/prometheus", params=params, timeout=SCRAPE_TIMEOUT)
        resp.raise_for_status()
        parts.append(relabel(filter_families(resp.text, conf), conf.labels, conf.clusters))
    except httpx.HTTPError as exc:
        log.warning("MeshMetric: Envoy's stats: %s", exc)
    for app in conf.applications:
        host = f"[{app.address}]" if ":" in app.address else app.address
        try:
            resp = await client.get(f"http://{host}:{app.port}{app.path}", timeout=SCRAPE_TIMEOUT)
            resp.raise_for_status()
            parts.append(relabel(resp.text, conf.labels))
        except httpx.HTTPError as exc:
            log.warning("MeshMetric: application %s: %s", app.name or app.port, exc)
    return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)


class MetricsServer:
    """The Prometheus backends of the current configuration, each an HTTP/1.1 server."""

    def __init__(self, admin_url: Callable[[], str], client: httpx.AsyncClient) -> None:
        self.admin_url = admin_url  # Envoy's, asked at each scrape (it changes when Envoy restarts)
        self.client = client
        self.conf: MetricsConf | None = None
        self.servers: dict[Backend, asyncio.Server] = {}

    async def configure(self, conf: MetricsConf | None) -> None:
        self.conf = conf
        wanted = set(conf.backends) if conf is not None else set()
        for backend in [b for b in self.servers if b not in wanted]:
            server = self.servers.pop(backend)
            server.close()
            await server.wait_closed()
        for backend in wanted - set(self.servers):
            try:
                self.servers[backend] = await asyncio.start_server(
                    self._handle, backend.address, backend.port, reuse_address=True
                )
                log.info("MeshMetric: serving %s:%d%s", backend.address, backend.port, backend.path)
            except OSError as exc:
                log.error("MeshMetric: cannot listen on %s:%d: %s", backend.address, backend.port, exc)

    async def close(self) -> None:
        await self.configure(None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            port = writer.get_extra_info("sockname")[1]
            conf = self.conf
            backend = next((b for b in conf.backends if b.port == port), None) if conf else None
            if conf is None or backend is None or path != backend.path or method not in ("GET", "HEAD"):
                await _respond(writer, 404, b"not found\n", "text/plain")
                return
            body = (await scrape(self.client, self.admin_url(), conf)).encode()
            await _respond(writer, 200, b"" if method == "HEAD" else body, CONTENT_TYPE, len(body))
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            writer.close()


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, length: int | None = None
) -> None:
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def poll_config(mesh: str, name: str, server: MetricsServer, interval: float = POLL_SECONDS) -> None:
    """Follow the proxy's MeshMetric configuration until cancelled (none while the listener is absent)."""
    path = dynconf_socket(mesh, name)
    transport = httpx.AsyncHTTPTransport(uds="\0" + path[1:] if path.startswith("@") else path)
    last: str | None = None
    async with httpx.AsyncClient(transport=transport, timeout=SCRAPE_TIMEOUT) as client:
        while True:
            text: str | None
            try:
                resp = await client.get(f"http://dynconf{MESHMETRIC_PATH}")
                text = resp.text if resp.status_code == 200 else None
            except httpx.HTTPError:
                text = None
            if text != last:
                try:
                    await server.configure(MetricsConf.parse(text) if text else None)
                    last = text
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("MeshMetric: bad configuration from the control plane: %s", exc)
            await asyncio.sleep(interval)


# -- access logs to TCP receivers ----------------------------------------------------------------------------------
def split_line(line: bytes) -> tuple[str, bytes] | None:
    """(receiver address, the line to send) of a line Envoy wrote to the FIFO; None if it names none."""
    text = line.rstrip(b"\n")
    if text.startswith(b"{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        address = doc.pop(TCP_JSON_ADDRESS_KEY, None) if isinstance(doc, dict) else None
        if not isinstance(address, str):
            return None
        return address, json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    address, sep, rest = text.partition(b";")
    if not sep:
        return None
    return address.decode(errors="replace"), rest + b"\n"


class LogForwarder:
    """Reads the FIFO and sends each line to its receiver; a receiver that cannot be reached loses its lines."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.owner = owner  # (uid, gid) of an Envoy that runs as its own user (--transparent-proxy)
        self.connections: dict[str, asyncio.StreamWriter] = {}
        self.fd = -1

    def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # a file left by an Envoy that ran without the agent
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.path, 0o600)
        if self.owner is not None:  # 0600 and Envoy's: only that Envoy (and root, the agent) use it
            os.chown(self.path, *self.owner, follow_symlinks=False)
        # read-write: opening never blocks, and Envoy's writes never fail for want of a reader
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(self.fd, "rb", buffering=0))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over the limit: skip it
                    continue
                if not line:
                    return
                found = split_line(line)
                if found is not None:
                    await self._send(*found)
        finally:
            transport.close()
            for writer in self.connections.values():
                writer.close()

    async def _send(self, address: str, line: bytes) -> None:
        for _ in range(2):  # a closed connection is opened again once
            conn = self.connections.get(address)
            if conn is None or conn.is_closing():
                host, _, port = address.rpartition(":")
                try:
                    opened = asyncio.open_connection(host.strip("[]"), int(port))
                    conn = (await asyncio.wait_for(opened, 5))[1]
                except (OSError, TimeoutError, ValueError) as exc:
                    log.warning("MeshAccessLog: cannot reach %s: %s", address, exc)
                    self.connections.pop(address, None)
                    return
                self.connections[address] = conn
            try:
                conn.write(line)
                await conn.drain()
                return
            except ConnectionError:
                conn.close()
                self.connections.pop(address, None)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@contextlib.asynccontextmanager
async def observability(
    mesh: str, name: str, admin_url: Callable[[], str], envoy_owner: tuple[int, int] | None = None
) -> AsyncIterator[None]:
    """Run the MeshMetric server and the access-log forwarder of proxy ``mesh/name`` for the block's duration.
    The FIFO exists before the block starts (Envoy opens it when a MeshAccessLog Tcp backend arrives); with
    ``envoy_owner`` (uid, gid: an Envoy running as its own user) it belongs to that user."""
    forwarder = LogForwarder(tcp_log_pipe(mesh, name), envoy_owner)
    try:
        forwarder.open()
    except OSError as exc:
        log.error(
            "MeshAccessLog: cannot create %s: %s (Tcp backends will not be forwarded)", forwarder.path, exc
        )
    async with httpx.AsyncClient() as client:
        server = MetricsServer(admin_url, client)
        tasks = [asyncio.ensure_future(poll_config(mesh, name, server))]
        if forwarder.fd >= 0:
            tasks.append(asyncio.ensure_future(forwarder.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.close()
            forwarder.remove()
