"""IR of the observability policies: access logs (MeshAccessLog), tracing (MeshTrace), metrics (MeshMetric).

Frozen, hashable dataclasses like the rest of the IR. Kuma's ``%KUMA_*%`` placeholders are already resolved here
(into literals or Envoy command operators, per listener), so translation only writes Envoy fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KeyValues = tuple[tuple[str, str], ...]

# Where Envoy writes the lines of a Tcp backend: a FIFO the agent creates before Envoy starts and reads, sending
# each line to the TCP address in its prefix (:mod:`isthmus.dp.metrics`). Envoy has no raw-TCP access logger
# (``tcp_grpc`` speaks gRPC ALS, ``fluentd`` Fluentd's forward protocol); Kuma forwards through kuma-dp the same way.
TCP_LOG_PIPE = "/tmp/isthmus-al-{mesh}-{name}.fifo"
TCP_JSON_ADDRESS_KEY = "isthmus.tcp.address"  # the address of a Json line, removed by the agent


def tcp_log_pipe(mesh: str, name: str) -> str:
    return TCP_LOG_PIPE.format(mesh=mesh, name=name)


@dataclass(frozen=True)
class LogFormat:
    """A resolved format: ``plain`` (a format string ending in a newline) or ``json`` (key, value) pairs."""

    plain: str = ""
    json: KeyValues = ()
    omit_empty: bool = False


@dataclass(frozen=True)
class AccessLog:
    """One backend of a listener. ``file``: ``path``; ``tcp``: ``path`` is the agent's FIFO and ``address`` the
    receiver; ``otel``: ``cluster`` reaches the collector at ``address`` (host:port), ``body`` is the canonical
    JSON of an OpenTelemetry AnyValue and ``attributes`` (key, value) strings."""

    backend: Literal["file", "tcp", "otel"]
    format: LogFormat
    path: str = ""
    address: str = ""
    cluster: str = ""
    body: str = ""
    attributes: KeyValues = ()


@dataclass(frozen=True)
class TraceTag:
    name: str
    literal: str | None = None
    header: str = ""
    default: str = ""


@dataclass(frozen=True)
class Tracing:
    """The tracer of every HTTP listener of a proxy. ``zipkin``: B3 propagation, spans POSTed to
    ``host:port`` + ``path``; ``otel``: W3C trace context, spans sent over OTLP/gRPC to ``host:port``."""

    provider: Literal["zipkin", "otel"]
    cluster: str
    host: str
    port: int
    service_name: str
    path: str = ""
    trace_id_128bit: bool = False
    api_version: Literal["httpJson", "httpProto"] = "httpJson"
    shared_span_context: bool = True
    overall: float = 100.0
    client: float = 100.0
    random: float = 100.0
    tags: tuple[TraceTag, ...] = ()


# A gateway proxy's observability for its Kong listeners (isthmus.gateway.mesh_leg.fuse copies it onto their HCMs):
# each mesh leg's ``gateway-leg:<service>`` RouteConfiguration, and ``gateway-leg:*`` for the rest (destinations
# outside the mesh, the tracer), carry in this typed metadata key an HttpConnectionManager holding only the
# ``access_log`` and ``tracing`` fields those routes get.
GATEWAY_HCM_METADATA = "isthmus.gateway_hcm"
# Kuma's KUMA_DESTINATION_SERVICE on a gateway listener (its match-all tag value)
GATEWAY_ANY_DESTINATION = "*"


@dataclass(frozen=True)
class GatewayObservability:
    """What a gateway proxy's Kong listeners get besides its mesh legs' own: ``access_logs`` for routes to
    destinations outside the mesh (MeshAccessLog's ``to: Mesh`` items), ``tracing`` (MeshTrace)."""

    access_logs: tuple[AccessLog, ...] = ()
    tracing: Tracing | None = None


@dataclass(frozen=True)
class CollectorCluster:
    """A cluster to an observability backend (host:port, HTTP/2 for gRPC)."""

    name: str
    host: str
    port: int
    http2: bool


# The Envoy listener that hands the agent its dynamic configuration (Kuma's ``_kuma:dynamicconfig``): on an
# abstract unix socket per proxy, ``GET /meshmetric`` answers the resolved MeshMetric as JSON.
DYNCONF_LISTENER = "_isthmus:dynamicconfig"
DYNCONF_SOCKET = "@isthmus-dynconf-{mesh}.{name}"
MESHMETRIC_PATH = "/meshmetric"


def dynconf_socket(mesh: str, name: str) -> str:
    return DYNCONF_SOCKET.format(mesh=mesh, name=name)


@dataclass(frozen=True)
class Metrics:
    """What the agent serves (MeshMetric): ``conf`` is canonical JSON of :class:`isthmus.dp.metrics.MetricsConf`'s
    input (``sidecar``, ``applications``, ``backends``, plus the labels), ``socket`` the dynconf listener's."""

    conf: str
    socket: str
