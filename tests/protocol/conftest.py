"""Fixtures for the ADS protocol tests: realistic Envoy resources, an in-process AdsServer, and a fake Envoy
(a grpc.aio client that writes DiscoveryRequests and reads DiscoveryResponses with timeouts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.server import AdsServer, NullCallbacks
from isthmus.xds.snapshot import Snapshot

NACK_BACKOFF = 0.3
NODE_ID = "default.web-1"

# -- resource builders ---------------------------------------------------------------------------------------


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.ApiVersion.V3
    )


def _pack(msg: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def cluster(name: str, *, timeout_ms: int = 1000, ca_secret: str | None = None) -> cluster_pb2.Cluster:
    """An EDS cluster over ADS, optionally with upstream TLS validated by an SDS secret."""
    out = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(
            seconds=timeout_ms // 1000, nanos=timeout_ms % 1000 * 1_000_000
        ),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
    )
    if ca_secret is not None:
        tls = tls_pb2.UpstreamTlsContext(
            common_tls_context=tls_pb2.CommonTlsContext(
                validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                    name=ca_secret, sds_config=_ads()
                )
            ),
            sni=name,
        )
        out.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(tls))
        )
    return out


def endpoints(name: str, *ports: int, host: str = "127.0.0.1") -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_address(host, port))
                    )
                    for port in ports
                ]
            )
        ],
    )


def listener(
    name: str, route_name: str, *, port: int = 10000, host: str = "127.0.0.1", cert_secret: str | None = None
) -> listener_pb2.Listener:
    """An HTTP listener whose connection manager takes its routes from RDS over ADS."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=route_name),
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))
        ],
    )
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm)
            )
        ]
    )
    if cert_secret is not None:
        tls = tls_pb2.DownstreamTlsContext(
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[
                    secret_pb2.SdsSecretConfig(name=cert_secret, sds_config=_ads())
                ]
            )
        )
        chain.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(tls))
        )
    return listener_pb2.Listener(name=name, address=_address(host, port), filter_chains=[chain])


def routes(
    name: str, *, body: str = "hello", cluster_name: str | None = None
) -> route_pb2.RouteConfiguration:
    """One virtual host matching everything: a direct response, or a route to ``cluster_name``."""
    match = route_components_pb2.RouteMatch(prefix="/")
    if cluster_name is None:
        route = route_components_pb2.Route(
            match=match,
            direct_response=route_components_pb2.DirectResponseAction(
                status=200, body=base_pb2.DataSource(inline_string=body)
            ),
        )
    else:
        route = route_components_pb2.Route(
            match=match, route=route_components_pb2.RouteAction(cluster=cluster_name)
        )
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])]
    )


def ca_secret(name: str, pem: str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n") -> Any:
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=pem)
        ),
    )


def full_snapshot(
    *, tag: str = "v1", timeout_ms: int = 1000, port: int = 8080, listener_port: int = 10000
) -> Snapshot:
    """A consistent snapshot of every type: cluster ``backend`` (EDS, TLS with secret ``backend-ca``), its
    endpoints, listener ``http`` (RDS ``local``), route ``local`` answering ``tag``, secret ``backend-ca``."""
    return Snapshot.build(
        {
            types.CLUSTER: [cluster("backend", timeout_ms=timeout_ms, ca_secret="backend-ca")],
            types.ENDPOINT: [endpoints("backend", port)],
            types.LISTENER: [listener("http", "local", port=listener_port)],
            types.ROUTE: [routes("local", body=tag)],
            types.SECRET: [
                ca_secret(
                    "backend-ca", pem=f"-----BEGIN CERTIFICATE-----\n{tag}\n-----END CERTIFICATE-----\n"
                )
            ],
        }
    )


# -- observing the server ------------------------------------------------------------------------------------


@dataclass
class Recorder(NullCallbacks):
    """Records every callback as a tuple (event, *arguments)."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    def on_stream_open(self, stream_id: int, node_id: str, node: Any) -> None:
        self.events.append(("open", stream_id, node_id, node))

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        self.events.append(("closed", stream_id, node_id))

    def on_response_sent(self, stream_id: int, node_id: str, type_url: str, version: str, nonce: str) -> None:
        self.events.append(("sent", stream_id, node_id, type_url, version, nonce))

    def on_ack(self, stream_id: int, node_id: str, type_url: str, version: str) -> None:
        self.events.append(("ack", stream_id, node_id, type_url, version))

    def on_nack(
        self, stream_id: int, node_id: str, type_url: str, rejected_version: str, error_message: str
    ) -> None:
        self.events.append(("nack", stream_id, node_id, type_url, rejected_version, error_message))

    def of(self, event: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == event]

    def last_ack(self) -> str | None:
        """The version of the latest ACK."""
        acks = self.of("ack")
        return acks[-1][4] if acks else None


async def eventually(check: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- the fake Envoy ------------------------------------------------------------------------------------------


class FakeEnvoy:
    """One ADS stream. The node goes on the first request only (``set_node_on_first_message_only``)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        cluster_name: str = "web",
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.node = base_pb2.Node(id=node_id, cluster=cluster_name)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(metadata=tuple(metadata))
        self.received: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = asyncio.Queue()
        self.names: dict[str, list[str]] = {}
        self.acked: dict[str, str] = {}  # type URL -> last accepted version
        self._first = True

    async def read_forever(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    self.received.put_nowait(EOFError("stream ended"))
                    return
                self.received.put_nowait(msg)
        except grpc.aio.AioRpcError as exc:
            self.received.put_nowait(exc)

    async def request(
        self,
        type_url: str,
        names: Sequence[str] | None = None,
        *,
        version: str | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        if names is not None:
            self.names[type_url] = list(names)
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, []),
            version_info=self.acked.get(type_url, "") if version is None else version,
            response_nonce=nonce,
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        await self.call.write(req)

    async def ack(self, resp: discovery_pb2.DiscoveryResponse, names: Sequence[str] | None = None) -> None:
        self.acked[resp.type_url] = resp.version_info
        await self.request(resp.type_url, names, nonce=resp.nonce)

    async def nack(self, resp: discovery_pb2.DiscoveryResponse, message: str = "rejected") -> None:
        await self.request(resp.type_url, nonce=resp.nonce, error=message)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        try:
            item = await asyncio.wait_for(self.received.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no DiscoveryResponse within {timeout}s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def recv_types(self, count: int, timeout: float = 2.0) -> list[str]:
        return [(await self.recv(timeout)).type_url for _ in range(count)]

    async def subscribe(
        self, type_url: str, names: Sequence[str] | None = None
    ) -> discovery_pb2.DiscoveryResponse:
        """Request a type, receive its first response and ACK it."""
        await self.request(type_url, names)
        resp = await self.recv()
        assert resp.type_url == type_url
        await self.ack(resp)
        return resp

    def close(self) -> None:
        """Drop the stream, as a restarting Envoy would."""
        self.call.cancel()

    async def expect_silence(self, seconds: float = 0.25) -> None:
        try:
            item = await asyncio.wait_for(self.received.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {_describe(item)}")


def _describe(item: Any) -> str:
    if isinstance(item, discovery_pb2.DiscoveryResponse):
        return f"{types.short_name(item.type_url)} version={item.version_info} nonce={item.nonce}"
    return repr(item)


def resource_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in resp.resources:
        cls = {
            types.CLUSTER: cluster_pb2.Cluster,
            types.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            types.LISTENER: listener_pb2.Listener,
            types.ROUTE: route_pb2.RouteConfiguration,
            types.SECRET: secret_pb2.Secret,
        }[packed.type_url]
        out.append(types.resource_name(cls.FromString(packed.value)))
    return out


# -- fixtures ------------------------------------------------------------------------------------------------


@dataclass
class Xds:
    cache: SnapshotCache
    server: AdsServer
    port: int
    callbacks: Recorder
    registry: CollectorRegistry
    connect: Callable[..., Awaitable[FakeEnvoy]]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def acked(self, resp: discovery_pb2.DiscoveryResponse) -> None:
        """Wait until the server has taken the ACK of ``resp`` (an ACK that arrives after a newer push of the
        same type is stale, so tests that change the snapshot right after an ACK wait for it first)."""
        wanted = (resp.type_url, resp.version_info)
        await eventually(
            lambda: any((e[3], e[4]) == wanted for e in self.callbacks.of("ack")), what=f"ACK of {wanted}"
        )


@pytest.fixture
async def xds() -> AsyncIterator[Xds]:
    cache = SnapshotCache()
    recorder = Recorder()
    registry = CollectorRegistry()
    server = AdsServer(cache, callbacks=recorder, metrics=XdsMetrics(registry), nack_backoff=NACK_BACKOFF)
    port = await server.start("127.0.0.1:0")
    channels: list[grpc.aio.Channel] = []
    readers: list[asyncio.Task[None]] = []

    async def connect(node_id: str = NODE_ID) -> FakeEnvoy:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        envoy = FakeEnvoy(channel, node_id)
        readers.append(asyncio.create_task(envoy.read_forever()))
        return envoy

    try:
        yield Xds(cache, server, port, recorder, registry, connect)
    finally:
        for channel in channels:
            await channel.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await server.stop(0)
