"""The per-proxy intermediate representation: frozen dataclasses, no protobuf.

A :class:`ProxyIR` says everything the xDS stage needs to know about one proxy: its listeners, the clusters and
endpoints they reach, its certificates and, per inbound, who may call it. Instances are hashable and compare by
value, so identical parts of different proxies translate once (see :mod:`isthmus.xds.translate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from isthmus.ir.names import DnsTable, ExternalUpstream
from isthmus.ir.observability import AccessLog, GatewayObservability, Metrics, Tracing
from isthmus.ir.traffic import (
    ConnectionLimits,
    FaultInjection,
    HealthCheck,
    HttpRoute,
    LoadBalancer,
    LocalRateLimit,
    OutlierDetection,
    Retry,
    Timeouts,
    WeightedBackend,
)
from isthmus.ir.transparent import TransparentProxy


@dataclass(frozen=True)
class Principal:
    """A boolean expression over the URI SANs of the peer certificate."""

    op: Literal["any", "none", "uri", "uri_prefix", "and", "or", "not"]
    value: str = ""
    children: tuple[Principal, ...] = ()

    @staticmethod
    def any() -> Principal:
        return _ANY

    @staticmethod
    def none() -> Principal:
        return _NONE

    @staticmethod
    def uri(value: str) -> Principal:
        return Principal("uri", value)

    @staticmethod
    def uri_prefix(value: str) -> Principal:
        return Principal("uri_prefix", value)

    @staticmethod
    def all_of(children: tuple[Principal, ...]) -> Principal:
        kept = tuple(c for c in children if c.op != "any")
        if any(c.op == "none" for c in kept):
            return _NONE
        if not kept:
            return _ANY
        return kept[0] if len(kept) == 1 else Principal("and", children=kept)

    @staticmethod
    def any_of(children: tuple[Principal, ...]) -> Principal:
        kept = tuple(c for c in children if c.op != "none")
        if any(c.op == "any" for c in kept):
            return _ANY
        if not kept:
            return _NONE
        return kept[0] if len(kept) == 1 else Principal("or", children=kept)

    def matches(self, uris: frozenset[str] | set[str], authenticated: bool = True) -> bool:
        """Evaluate against a peer's URI SANs, as Envoy's RBAC would (for tests and ``explain``)."""
        if self.op == "any":
            return True
        if self.op == "none":
            return False
        if self.op == "uri":
            return authenticated and self.value in uris
        if self.op == "uri_prefix":
            return authenticated and any(u.startswith(self.value) for u in uris)
        if self.op == "and":
            return all(c.matches(uris, authenticated) for c in self.children)
        if self.op == "or":
            return any(c.matches(uris, authenticated) for c in self.children)
        return not self.children[0].matches(uris, authenticated)

    @staticmethod
    def negate(child: Principal) -> Principal:
        if child.op == "any":
            return _NONE
        if child.op == "none":
            return _ANY
        if child.op == "not":
            return child.children[0]
        return Principal("not", children=(child,))


_ANY = Principal("any")
_NONE = Principal("none")


class Protocol(str, Enum):
    TCP = "tcp"
    HTTP = "http"  # HTTP/1.1 or HTTP/2 from the application; HTTP/2 between sidecars
    HTTP2 = "http2"  # HTTP/2 (and gRPC) end to end


class TlsMode(str, Enum):
    OFF = "off"  # mesh without mTLS: plaintext, no permissions enforced
    STRICT = "strict"  # mTLS only
    PERMISSIVE = "permissive"  # mTLS and plaintext on the same port


@dataclass(frozen=True)
class MeshTls:
    """Names of the SDS secrets a proxy uses for mesh mTLS."""

    identity_secret: str
    ca_secret: str
    min_version: str = "TLSv1_2"  # Envoy TlsProtocol names: TLS_AUTO, TLSv1_0 .. TLSv1_3 (MeshTLS)
    max_version: str | None = None
    ciphers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    locality: str = ""  # the zone of the endpoint ("" : this proxy's own zone)
    weight: int = 1  # a zone ingress stands for ``weight`` instances (isthmus.ingress.remote)
    priority: int = 0  # Envoy priority: 0 first, higher ones take traffic as lower ones lose health
    sub_zone: str = (
        ""  # ``<tag>=<value>`` of the affinity group it is in (MeshLoadBalancingStrategy affinityTags)
    )
    locality_weight: int = 0  # its group's locality weight (0: none; set for every group when affinity is on)


@dataclass(frozen=True)
class Cluster:
    name: str
    protocol: Protocol
    eds: bool  # True: endpoints come from EDS; False: STATIC with ``endpoints``
    endpoints: tuple[Endpoint, ...] = ()
    tls: MeshTls | None = None  # upstream mTLS to other sidecars
    verify_spiffe_id: str = ""  # the URI SAN the server must present
    connect_timeout_ms: int = 5000
    service: str = ""  # the mesh service behind it ("" for the local application)
    subset: tuple[tuple[str, str], ...] = ()  # only the instances with these tags (route backends by tags)
    timeouts: Timeouts | None = None  # idle and connection durations (connect timeout: connect_timeout_ms)
    limits: ConnectionLimits | None = None
    outlier: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    lb: LoadBalancer | None = None
    external: ExternalUpstream | None = None  # a MeshExternalService's upstream (isthmus.names)
    sni: str = ""  # upstream TLS SNI: how a remote zone's ingress routes the connection (isthmus.ingress)


@dataclass(frozen=True)
class EndpointSet:
    cluster: str
    endpoints: tuple[Endpoint, ...]
    overprovisioning: int | None = None  # Envoy's overprovisioning factor (failoverThreshold); None: Envoy's


@dataclass(frozen=True)
class Permissions:
    allow: Principal
    shadow_allow: Principal
    policies: tuple[str, ...]


@dataclass(frozen=True)
class InboundListener:
    name: str
    address: str
    port: int
    service: str
    protocol: Protocol
    local_cluster: str
    tls_mode: TlsMode
    tls: MeshTls | None
    trust_domain_prefix: str  # peers must present a URI SAN under this prefix (``spiffe://<mesh>/``)
    permissions: Permissions | None  # None: not enforced (mTLS off)
    timeouts: Timeouts | None = None
    rate_limit: LocalRateLimit | None = None
    faults: tuple[FaultInjection, ...] = ()
    # SPIFFE IDs of the mesh's gateways: only their requests keep Kong's consumer headers (HTTP inbounds drop them
    # from every other caller, see :data:`CONSUMER_HEADERS`)
    gateway_callers: tuple[str, ...] = ()
    access_logs: tuple[AccessLog, ...] = ()  # MeshAccessLog
    tracing: Tracing | None = None  # MeshTrace (HTTP listeners)
    bind: bool = (
        True  # False: a transparent proxy's inbound, reached by original destination (ir/transparent.py)
    )


# Kong's consumer headers: set by a gateway after authentication; a sidecar's inbound removes them unless the caller
# (the peer certificate's SPIFFE ID) is a gateway of the mesh, so a service can trust them.
CONSUMER_HEADERS = (
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-consumer-groups",
    "x-authenticated-groups",
    "x-authenticated-scope",
    "x-authenticated-userid",
)


@dataclass(frozen=True)
class OutboundListener:
    name: str
    address: str
    port: int
    service: str
    protocol: Protocol
    cluster: str
    route_config: str  # RDS name for HTTP; "" for TCP
    routes: tuple[HttpRoute, ...] = ()  # HTTP routes in match order; empty: everything to ``cluster``
    tcp_backends: tuple[WeightedBackend, ...] = ()  # TCP split; empty: everything to ``cluster``
    timeouts: Timeouts | None = None  # HCM / TCP proxy timeouts, and the default route's request timeout
    retry: Retry | None = None  # the default for routes that set none
    lb: LoadBalancer | None = None  # hash policies for the routes (the cluster carries the rest)
    access_logs: tuple[AccessLog, ...] = ()  # MeshAccessLog
    tracing: Tracing | None = None  # MeshTrace (HTTP listeners)
    bind: bool = (
        True  # False: reached by original destination through a transparent proxy (ir/transparent.py)
    )


@dataclass(frozen=True)
class Secret:
    name: str
    certificate_chain: str = ""
    private_key: str = ""
    trusted_ca: str = ""


@dataclass(frozen=True)
class ProxyIR:
    node_id: str
    mesh: str
    name: str
    inbounds: tuple[InboundListener, ...]
    outbounds: tuple[OutboundListener, ...]
    clusters: tuple[Cluster, ...]
    endpoints: tuple[EndpointSet, ...]
    secrets: tuple[Secret, ...]
    patches: tuple[str, ...] = ()  # MeshProxyPatch modifications, canonical JSON, applied after translation
    dns: DnsTable | None = None  # the data plane's DNS for generated names (isthmus.names)
    metrics: Metrics | None = None  # MeshMetric: what the agent serves, handed over by the dynconf listener
    transparent: TransparentProxy | None = (
        None  # catch-all listeners of a transparent proxy (ir/transparent.py)
    )
    gateway: GatewayObservability | None = None  # a gateway's Kong listeners: MeshAccessLog, MeshTrace
