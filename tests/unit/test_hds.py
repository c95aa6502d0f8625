"""Kuma's service probes (``inbound.serviceProbe``) through Envoy's Health Discovery Service.

Inputs are Kuma's documented forms (kuma.io docs "Health": Universal probes; the checks Kuma sends are
``pkg/hds/tracker/healthcheck_generator.go``: a TCP check of the application's address and port per probed
inbound, fields from ``serviceProbe`` or ``dpServer.hds.checkDefaults``; results are written back as
``pkg/hds/tracker/callbacks.go`` does: ``state`` Ready/NotReady and ``health.ready``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import health_check_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.cp.hds import HdsServer, HdsSettings, apply_health, health_check_specifier, probe_results
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import parse_document
from isthmus.store.base import Op, OpKind
from isthmus.store.memory import MemoryStore
from isthmus.xds.server import StreamDenied

REG = default_registry()

# kuma.io docs, "Health" / Universal probes
KUMA_DOC = """
type: Dataplane
mesh: default
name: web-01
networking:
  address: 127.0.0.1
  inbound:
    - port: 11011
      servicePort: 11012
      serviceProbe:
        timeout: 2s
        interval: 1s
        healthyThreshold: 1
        unhealthyThreshold: 1
        tcp: {}
      tags:
        kuma.io/service: backend
        kuma.io/protocol: http
"""


def doc(**probe: Any) -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load(KUMA_DOC)
    if probe:
        d["networking"]["inbound"][0]["serviceProbe"] = probe
    return d


def spec_of(d: dict[str, Any]) -> DataplaneSpec:
    resource = parse_document(d, REG)
    assert isinstance(resource.spec, DataplaneSpec)
    return resource.spec


def errors(d: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as caught:
        parse_document(d, REG)
    return [(e.field, e.reason) for e in caught.value.errors]


# -- the resource --------------------------------------------------------------------------------------------------
def test_kumas_documented_service_probe_is_accepted() -> None:
    probe = spec_of(doc()).networking.inbound[0].service_probe
    assert probe is not None
    assert (probe.timeout, probe.interval, probe.healthy_threshold, probe.unhealthy_threshold) == (
        "2s",
        "1s",
        1,
        1,
    )
    assert spec_of(doc(tcp={})).networking.inbound[0].service_probe is not None  # every field optional


@pytest.mark.parametrize(
    ("probe", "field", "reason"),
    [
        ({"interval": "0s"}, "interval", "must be greater than zero"),
        ({"timeout": "soon"}, "timeout", "invalid duration"),
        ({"healthyThreshold": 0}, "healthyThreshold", "greater than or equal to 1"),
        ({"unhealthyThreshold": -1}, "unhealthyThreshold", "greater than or equal to 1"),
        ({"tcp": {"port": 1}}, "tcp.port", "unknown field"),
        ({"http": {"path": "/"}}, "http", "unknown field"),
    ],
)
def test_bad_service_probe_fields_are_refused_naming_the_field(
    probe: dict[str, Any], field: str, reason: str
) -> None:
    ((where, why),) = errors(doc(**probe))
    assert where == f"networking.inbound[0].serviceProbe.{field}"
    assert reason in why


# -- what the proxy is asked to check ------------------------------------------------------------------------------
def test_specifier_has_a_tcp_check_of_the_application_per_probed_inbound() -> None:
    spec = health_check_specifier(spec_of(doc()), HdsSettings())
    assert spec.interval.ToTimedelta() == timedelta(seconds=5)  # Kuma's dpServer.hds.interval
    (cluster,) = spec.cluster_health_checks
    assert cluster.cluster_name == "localhost:11012"  # Kuma's name of the inbound's local cluster
    (locality,) = cluster.locality_endpoints
    (endpoint,) = locality.endpoints
    assert (endpoint.address.socket_address.address, endpoint.address.socket_address.port_value) == (
        "127.0.0.1",
        11012,
    )
    (check,) = cluster.health_checks
    assert check.HasField("tcp_health_check")
    assert check.timeout.ToTimedelta() == timedelta(seconds=2)
    assert check.interval.ToTimedelta() == timedelta(seconds=1)
    assert (check.healthy_threshold.value, check.unhealthy_threshold.value) == (1, 1)


def test_unset_probe_fields_take_the_control_planes_defaults() -> None:
    settings = HdsSettings(
        check_timeout=timedelta(seconds=3),
        check_interval=timedelta(seconds=4),
        healthy_threshold=2,
        unhealthy_threshold=5,
    )
    (cluster,) = health_check_specifier(spec_of(doc(tcp={})), settings).cluster_health_checks
    (check,) = cluster.health_checks
    assert check.timeout.ToTimedelta() == timedelta(seconds=3)
    assert check.interval.ToTimedelta() == timedelta(seconds=4)
    assert check.no_traffic_interval.ToTimedelta() == timedelta(seconds=4)  # HDS clusters carry no traffic
    assert (check.healthy_threshold.value, check.unhealthy_threshold.value) == (2, 5)
    (cluster,) = health_check_specifier(
        spec_of(doc(interval="7s", timeout="500ms", healthyThreshold=3, unhealthyThreshold=4)), settings
    ).cluster_health_checks
    (check,) = cluster.health_checks
    assert check.interval.ToTimedelta() == timedelta(seconds=7)
    assert check.timeout.ToTimedelta() == timedelta(milliseconds=500)
    assert (check.healthy_threshold.value, check.unhealthy_threshold.value) == (3, 4)


def test_only_inbounds_with_service_probe_are_checked_at_their_service_address() -> None:
    d = doc()
    d["networking"]["inbound"] += [
        {"port": 11021, "servicePort": 11022, "tags": {"kuma.io/service": "other"}},
        {
            "port": 11031,
            "servicePort": 11032,
            "serviceAddress": "127.0.0.2",
            "serviceProbe": {"tcp": {}},
            "tags": {"kuma.io/service": "third"},
        },
        {
            "port": 11041,
            "state": "Ignored",
            "serviceProbe": {"tcp": {}},
            "tags": {"kuma.io/service": "ignored"},
        },
    ]
    checks = health_check_specifier(spec_of(d), HdsSettings()).cluster_health_checks
    assert [c.cluster_name for c in checks] == ["localhost:11012", "localhost:11032"]
    address = checks[1].locality_endpoints[0].endpoints[0].address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.2", 11032)


def test_a_dataplane_without_probes_gets_an_empty_specifier() -> None:
    d = doc()
    del d["networking"]["inbound"][0]["serviceProbe"]
    assert not health_check_specifier(spec_of(d), HdsSettings()).cluster_health_checks


# -- what Envoy reports, and what is stored --------------------------------------------------------------------------
def report(**statuses: int) -> hds_pb2.EndpointHealthResponse:
    response = hds_pb2.EndpointHealthResponse()
    for name, status in statuses.items():
        cluster = response.cluster_endpoints_health.add(cluster_name=name.replace("_", ":"))
        cluster.locality_endpoints_health.add().endpoints_health.add(health_status=status)
    return response


def test_healthy_and_unknown_count_as_healthy_as_in_kuma() -> None:
    results = probe_results(
        report(
            localhost_1=health_check_pb2.HEALTHY,
            localhost_2=health_check_pb2.UNKNOWN,
            localhost_3=health_check_pb2.UNHEALTHY,
            localhost_4=health_check_pb2.TIMEOUT,
        )
    )
    assert results == {"localhost:1": True, "localhost:2": True, "localhost:3": False, "localhost:4": False}


def stored_spec(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("type", "mesh", "name")}


def test_results_are_written_as_state_and_health_ready_only_when_they_change() -> None:
    d = doc()
    d["networking"]["inbound"].append({"port": 11021, "servicePort": 11022, "tags": {"kuma.io/service": "x"}})
    spec = stored_spec(d)
    down = apply_health(spec, {"localhost:11012": False, "localhost:11022": False})
    assert down is not None
    probed, unprobed = down["networking"]["inbound"]
    assert (probed["state"], probed["health"]) == ("NotReady", {"ready": False})
    assert unprobed == d["networking"]["inbound"][1]  # no serviceProbe: left to whoever manages it
    assert apply_health(down, {"localhost:11012": False}) is None  # no change, no write
    up = apply_health(down, {"localhost:11012": True})
    assert up is not None
    assert (up["networking"]["inbound"][0]["state"], up["networking"]["inbound"][0]["health"]) == (
        "Ready",
        {"ready": True},
    )
    assert spec_of(
        {"type": "Dataplane", "mesh": "default", "name": "web-01", **up}
    )  # still a valid Dataplane


def test_a_not_ready_inbound_is_no_endpoint_of_other_proxies() -> None:
    def context(spec: dict[str, Any]) -> Any:
        mesh = parse_document({"type": "Mesh", "name": "default"}, REG)
        dp = parse_document({"type": "Dataplane", "mesh": "default", "name": "web-01", **spec}, REG)
        return build_mesh_context(mesh, [dp], [])

    spec = stored_spec(doc())
    down = apply_health(spec, {"localhost:11012": False})
    assert down is not None
    assert [e.ready for e in context(down).endpoints["backend"]] == [False]
    up = apply_health(down, {"localhost:11012": True})
    assert up is not None
    assert [e.ready for e in context(up).endpoints["backend"]] == [True]


# -- the gRPC service on a real server and store -------------------------------------------------------------------
async def serve(
    store: MemoryStore, settings: HdsSettings | None = None, **kwargs: Any
) -> tuple[grpc.aio.Server, HdsServer, str]:
    hds = HdsServer(store, settings or HdsSettings(min_report_gap=0), **kwargs)
    server = grpc.aio.server()
    hds.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, hds, f"127.0.0.1:{port}"


def first_request(node_id: str) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
    message.health_check_request.node.id = node_id
    return message


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    await s.start()
    d = doc()
    await s.write([Op(OpKind.CREATE, "Dataplane", "default", "web-01", stored_spec(d))])
    yield s
    await s.close()


async def test_stream_sends_the_specifier_and_stores_reported_health(store: MemoryStore) -> None:
    server, hds, address = await serve(store)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            outgoing: asyncio.Queue[hds_pb2.HealthCheckRequestOrEndpointHealthResponse | None] = (
                asyncio.Queue()
            )

            async def messages() -> AsyncIterator[hds_pb2.HealthCheckRequestOrEndpointHealthResponse]:
                while (item := await outgoing.get()) is not None:
                    yield item

            call = hds_pb2_grpc.HealthDiscoveryServiceStub(channel).StreamHealthCheck(messages())
            await outgoing.put(first_request("default.web-01"))
            specifier = await call.read()
            assert [c.cluster_name for c in specifier.cluster_health_checks] == ["localhost:11012"]

            async def stored_inbound() -> dict[str, Any]:
                record = await store.get("Dataplane", "default", "web-01")
                assert record is not None
                inbound: dict[str, Any] = record.spec["networking"]["inbound"][0]
                return inbound

            for status, ready in ((health_check_pb2.UNHEALTHY, False), (health_check_pb2.HEALTHY, True)):
                message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
                message.endpoint_health_response.CopyFrom(report(localhost_11012=status))
                await outgoing.put(message)
                while (await stored_inbound()).get("health") != {"ready": ready}:
                    await asyncio.sleep(0.01)
                assert (await stored_inbound())["state"] == ("Ready" if ready else "NotReady")

            # the Dataplane loses its probe: its change sends an empty specifier
            record = await store.get("Dataplane", "default", "web-01")
            assert record is not None
            spec = record.spec
            del spec["networking"]["inbound"][0]["serviceProbe"]
            await store.write([Op(OpKind.UPDATE, "Dataplane", "default", "web-01", spec)])
            assert not (await call.read()).cluster_health_checks
            await outgoing.put(None)
    finally:
        hds.stop()
        await server.stop(0)


async def test_stream_refused_by_the_authenticator_gets_its_status(store: MemoryStore) -> None:
    async def refuse(node_id: str, metadata: Any) -> None:
        raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, f"no token for {node_id}")

    server, _, address = await serve(store, authenticator=refuse)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = hds_pb2_grpc.HealthDiscoveryServiceStub(channel).StreamHealthCheck(
                iter([first_request("default.web-01")])
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "no token for default.web-01"
    finally:
        await server.stop(0)


async def test_first_message_must_name_the_node(store: MemoryStore) -> None:
    server, _, address = await serve(store)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
            message.endpoint_health_response.CopyFrom(report(localhost_1=health_check_pb2.HEALTHY))
            call = hds_pb2_grpc.HealthDiscoveryServiceStub(channel).StreamHealthCheck(iter([message]))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)


async def test_idle_strangers_hold_no_slot_and_are_cut_at_the_deadline(store: MemoryStore) -> None:
    settings = HdsSettings(min_report_gap=0, max_streams=1, auth_timeout=0.5)
    server, hds, address = await serve(store, settings)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = hds_pb2_grpc.HealthDiscoveryServiceStub(channel)
            never: asyncio.Event = asyncio.Event()

            async def silent() -> AsyncIterator[hds_pb2.HealthCheckRequestOrEndpointHealthResponse]:
                await never.wait()
                yield first_request("default.web-01")  # pragma: no cover - never reached

            idle = [stub.StreamHealthCheck(silent()) for _ in range(3)]
            await asyncio.sleep(0.1)
            # the only authenticated slot is still free for a proxy that names itself
            proxy = stub.StreamHealthCheck(iter([first_request("default.web-01")]))
            specifier = await proxy.read()
            assert [c.cluster_name for c in specifier.cluster_health_checks] == ["localhost:11012"]
            for call in idle:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            proxy.cancel()
    finally:
        hds.stop()
        await server.stop(0)
