"""Kuma's service probes: Envoy's Health Discovery Service (HDS) on the xDS port.

A Dataplane inbound with ``serviceProbe`` asks the control plane to have its own proxy check the application.
Each proxy's bootstrap points ``hds_config`` at the control plane (the ADS cluster, the same token), so its
Envoy opens ``envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck``:

1. Envoy sends a ``HealthCheckRequest`` with its node; the stream is authenticated exactly like an ADS stream
   (the data-plane token in the gRPC metadata must be this node's);
2. the control plane answers with a ``HealthCheckSpecifier``: per probed inbound a cluster named like the
   inbound's local cluster (``localhost:<servicePort>``, as Kuma names it) with one endpoint, the application's
   ``serviceAddress:servicePort``, and a TCP health check whose timeout, interval and thresholds come from the
   ``serviceProbe`` or the control plane's defaults (Kuma's ``dpServer.hds.checkDefaults``: 2s, 1s, 1, 1);
   ``interval`` (Kuma's 5s) is how often Envoy reports. The specifier is rebuilt when the stored Dataplane
   changes (a store event; Kuma rebuilds every 10s instead) and at the latest every ``refresh_interval``, and
   sent again when it changed;
3. Envoy reports ``EndpointHealthResponse`` messages; a status HEALTHY or UNKNOWN is healthy (as in Kuma).
   The control plane writes each probed inbound's result into the stored Dataplane as Kuma 2.x does: ``state``
   ``Ready``/``NotReady`` and ``health: {ready: true|false}`` (written only when they change; ``Ignored``
   inbounds are left alone). A NotReady inbound stays a listener of its own proxy but is no endpoint of other
   proxies (:mod:`isthmus.context.mesh_context`), so their outbounds stop sending it traffic.

Inbounds without ``serviceProbe`` are never touched (custom automation may keep writing their ``health``, as
Kuma documents). Kuma also checks the proxy's own admin ``/ready`` and marks every inbound NotReady while Envoy
is not ready; Isthmus does not (yet).

State per stream is bounded: the node, the last specifier sent, one wake-up event. At most ``max_streams`` streams
(RESOURCE_EXHAUSTED beyond), and a stream's reports are applied at most every ``min_report_gap`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc
from google.protobuf import duration_pb2
from pydantic import ValidationError

from isthmus.resources.common import STORED
from isthmus.resources.dataplane import LOOPBACK, DataplaneSpec, Inbound, InboundState
from isthmus.resources.duration import parse_duration
from isthmus.store.base import Conflict, Op, OpKind, ResourceStore
from isthmus.xds.node import MAX_NODE_ID_LENGTH, InvalidNodeId, parse_node_id
from isthmus.xds.server import Authenticator, authenticate_stream

__all__ = [
    "HdsServer",
    "HdsSettings",
    "apply_health",
    "health_check_specifier",
    "probe_results",
]

log = logging.getLogger(__name__)

_HEALTHY = (
    health_check_pb2.HEALTHY,
    health_check_pb2.UNKNOWN,
)  # Kuma counts UNKNOWN (not checked yet) as healthy
_WRITE_ATTEMPTS = 3  # read-modify-write rounds when the Dataplane changes meanwhile


@dataclass(frozen=True)
class HdsSettings:
    """The control plane's HDS settings (Kuma's ``dpServer.hds`` and its ``checkDefaults``)."""

    interval: timedelta = timedelta(seconds=5)  # how often Envoy reports
    refresh_interval: timedelta = timedelta(minutes=5)  # rebuilt on store events, and at least this often
    check_timeout: timedelta = timedelta(seconds=2)
    check_interval: timedelta = timedelta(seconds=1)
    healthy_threshold: int = 1
    unhealthy_threshold: int = 1
    max_streams: int = 10_000  # authenticated streams
    max_pending_streams: int = 1_000  # streams that have not yet sent their node and passed authentication
    auth_timeout: float = 10.0  # seconds a new stream has to do so
    min_report_gap: float = 0.2  # seconds between two reports applied on one stream


def _duration(delta: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(delta)
    return value


def probe_cluster(inbound: Inbound) -> str:
    """The HDS cluster of a probed inbound: Kuma's name of the inbound's local cluster."""
    return f"localhost:{inbound.service_port or inbound.port}"


def _probed(spec: DataplaneSpec) -> list[Inbound]:
    return [
        inbound
        for inbound in spec.networking.inbound
        if inbound.service_probe is not None and inbound.state is not InboundState.IGNORED
    ]


def health_check_specifier(spec: DataplaneSpec, settings: HdsSettings) -> hds_pb2.HealthCheckSpecifier:
    """What a proxy must check: a TCP health check of the application of every probed inbound."""
    specifier = hds_pb2.HealthCheckSpecifier(interval=_duration(settings.interval))
    seen: set[str] = set()
    for inbound in _probed(spec):
        name = probe_cluster(inbound)
        if name in seen:  # two inbounds of one application port share the check (and its result)
            continue
        seen.add(name)
        probe = inbound.service_probe
        assert probe is not None
        interval = parse_duration(probe.interval) if probe.interval else settings.check_interval
        timeout = parse_duration(probe.timeout) if probe.timeout else settings.check_timeout
        address = address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=inbound.service_address or LOOPBACK, port_value=inbound.service_port or inbound.port
            )
        )
        check = health_check_pb2.HealthCheck(
            timeout=_duration(timeout),
            interval=_duration(interval),
            # HDS clusters never carry traffic, so Envoy would use no_traffic_interval: the probe's interval
            no_traffic_interval=_duration(interval),
            tcp_health_check=health_check_pb2.HealthCheck.TcpHealthCheck(),
        )
        check.healthy_threshold.value = probe.healthy_threshold or settings.healthy_threshold
        check.unhealthy_threshold.value = probe.unhealthy_threshold or settings.unhealthy_threshold
        specifier.cluster_health_checks.append(
            hds_pb2.ClusterHealthCheck(
                cluster_name=name,
                health_checks=[check],
                locality_endpoints=[
                    hds_pb2.LocalityEndpoints(endpoints=[endpoint_components_pb2.Endpoint(address=address)])
                ],
            )
        )
    return specifier


def probe_results(response: hds_pb2.EndpointHealthResponse) -> dict[str, bool]:
    """Cluster name -> healthy, from one report (a cluster without endpoints reports nothing)."""
    results: dict[str, bool] = {}
    for cluster in response.cluster_endpoints_health:
        statuses = [
            e.health_status for loc in cluster.locality_endpoints_health for e in loc.endpoints_health
        ]
        if statuses:
            results[cluster.cluster_name] = all(status in _HEALTHY for status in statuses)
    return results


def _ready(raw: Mapping[str, Any]) -> tuple[str | None, Any]:
    return raw.get("state"), raw.get("health")


def apply_health(spec: Mapping[str, Any], results: Mapping[str, bool]) -> dict[str, Any] | None:
    """``spec`` (a stored Dataplane spec) with the probed inbounds' results written as Kuma does (``state``
    Ready/NotReady and ``health.ready``), or None when nothing changes. Inbounds without ``serviceProbe``, and
    ``Ignored`` ones, are left alone."""
    networking = spec.get("networking")
    if not isinstance(networking, Mapping):
        return None
    inbounds = networking.get("inbound")
    if not isinstance(inbounds, list):
        return None
    changed = False
    new_inbounds: list[Any] = []
    for raw in inbounds:
        new_inbounds.append(raw)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("serviceProbe"), Mapping):
            continue
        if raw.get("state") == InboundState.IGNORED.value:
            continue
        port = raw.get("servicePort") or raw.get("port")
        healthy = results.get(f"localhost:{port}")
        if healthy is None:
            continue
        state = (InboundState.READY if healthy else InboundState.NOT_READY).value
        if _ready(raw) == (state, {"ready": healthy}):
            continue
        new_inbounds[-1] = {**raw, "state": state, "health": {"ready": healthy}}
        changed = True
    if not changed:
        return None
    return {**spec, "networking": {**networking, "inbound": new_inbounds}}


class HdsServer(hds_pb2_grpc.HealthDiscoveryServiceServicer):  # type: ignore[misc]
    """``StreamHealthCheck`` for the proxies of a store; add it to the ADS server with :meth:`register`."""

    def __init__(
        self,
        store: ResourceStore,
        settings: HdsSettings | None = None,
        *,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or HdsSettings()
        self.authenticator = authenticator
        self._active = 0
        self._pending = 0
        self._stopping = asyncio.Event()
        self._changed: dict[tuple[str, str], set[asyncio.Event]] = {}  # (mesh, name) -> its streams' wake-ups
        self._events: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        hds_pb2_grpc.add_HealthDiscoveryServiceServicer_to_server(self, server)

    def stop(self) -> None:
        """End every stream (Envoy reconnects to the next control plane)."""
        self._stopping.set()
        if self._events is not None:
            self._events.cancel()

    async def _follow_store(self) -> None:
        """Wake the streams of a Dataplane that changed (started with the first stream, ends with stop)."""
        while True:
            try:
                async with self.store.subscribe() as events:
                    async for event in events:
                        if event.type == "Dataplane":
                            for wake in self._changed.get((event.mesh, event.name), ()):
                                wake.set()
                return  # the store closed
            except Exception:
                log.exception("HDS: following store events failed; again in 1s")
                for wakes in self._changed.values():  # something may have been missed
                    for wake in wakes:
                        wake.set()
                await asyncio.sleep(1)

    def stream_count(self) -> int:
        return self._active

    async def StreamHealthCheck(
        self,
        request_iterator: AsyncIterable[hds_pb2.HealthCheckRequestOrEndpointHealthResponse],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # strangers cannot hold the slots of proxies: a stream counts against max_streams only once it has
        # authenticated, which it must do within auth_timeout (as the ADS server does)
        if self._pending >= self.settings.max_pending_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many unauthenticated HDS streams")
        self._pending += 1
        try:
            requests = aiter(request_iterator)
            try:
                async with asyncio.timeout(self.settings.auth_timeout):
                    first = await anext(requests, None)
                    if first is None:
                        return
                    node_id = first.health_check_request.node.id
                    if not node_id or len(node_id) > MAX_NODE_ID_LENGTH:
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "the first message must be a HealthCheckRequest with a node.id of at most "
                            f"{MAX_NODE_ID_LENGTH} characters",
                        )
                    try:
                        mesh, name = parse_node_id(node_id)
                    except InvalidNodeId as exc:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    if self.authenticator is not None:
                        await self._authenticate(node_id, context)
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the stream did not authenticate in time"
                )
        finally:
            self._pending -= 1
        if self._active >= self.settings.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this control plane serves at most {self.settings.max_streams} HDS streams; try again later",
            )
        self._active += 1
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._send(mesh, name, context)),
                    tg.create_task(self._receive(mesh, name, requests)),
                ]
                stopping = tg.create_task(self._stopping.wait())
                await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
                for task in (*tasks, stopping):
                    task.cancel()
        finally:
            self._active -= 1

    async def _authenticate(self, node_id: str, context: grpc.aio.ServicerContext) -> None:
        assert self.authenticator is not None
        await authenticate_stream(self.authenticator, node_id, context, "HDS")

    async def _specifier(self, mesh: str, name: str) -> hds_pb2.HealthCheckSpecifier:
        record = await self.store.get("Dataplane", mesh, name)
        if record is None:
            return hds_pb2.HealthCheckSpecifier(interval=_duration(self.settings.interval))
        try:
            spec = DataplaneSpec.model_validate(record.spec, context={STORED: True})
        except ValidationError as exc:  # a record this version cannot read: probe nothing, keep the stream
            log.warning("Dataplane %s/%s: not probed, its record does not load: %s", mesh, name, exc)
            return hds_pb2.HealthCheckSpecifier(interval=_duration(self.settings.interval))
        return health_check_specifier(spec, self.settings)

    async def _send(self, mesh: str, name: str, context: grpc.aio.ServicerContext) -> None:
        """Send the specifier, then rebuild it every refresh interval and send it again when it changed."""
        if self._events is None or self._events.done():
            self._events = asyncio.create_task(self._follow_store(), name="hds-store-events")
        wake = asyncio.Event()
        self._changed.setdefault((mesh, name), set()).add(wake)
        try:
            last: bytes | None = None
            while True:
                wake.clear()
                specifier = await self._specifier(mesh, name)
                raw = specifier.SerializeToString(deterministic=True)
                if raw != last:
                    await context.write(specifier)
                    last = raw
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.settings.refresh_interval.total_seconds())
        finally:
            wakes = self._changed.get((mesh, name), set())
            wakes.discard(wake)
            if not wakes:
                self._changed.pop((mesh, name), None)

    async def _receive(
        self,
        mesh: str,
        name: str,
        requests: AsyncIterator[hds_pb2.HealthCheckRequestOrEndpointHealthResponse],
    ) -> None:
        async for message in requests:
            if not message.HasField("endpoint_health_response"):
                continue  # a repeated HealthCheckRequest: the stream is bound to its first node
            results = probe_results(message.endpoint_health_response)
            if results:
                await self._record(mesh, name, results)
            await asyncio.sleep(self.settings.min_report_gap)

    async def _record(self, mesh: str, name: str, results: Mapping[str, bool]) -> None:
        """Write the results into the stored Dataplane (optimistic concurrency; a deleted one is left deleted)."""
        for _ in range(_WRITE_ATTEMPTS):
            record = await self.store.get("Dataplane", mesh, name)
            if record is None:
                return
            spec = apply_health(record.spec, results)
            if spec is None:
                return
            op = Op(
                OpKind.UPDATE,
                "Dataplane",
                mesh,
                name,
                spec,
                dict(record.labels),
                expected_version=record.version,
            )
            try:
                await self.store.write([op])
            except Conflict:
                continue
            log.info("Dataplane %s/%s: probed inbounds %s", mesh, name, _shown(results))
            return


def _shown(results: Mapping[str, bool]) -> str:
    return ", ".join(f"{k} {'ready' if v else 'not ready'}" for k, v in sorted(results.items()))
