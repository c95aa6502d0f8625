"""IR of traffic policies: routes, timeouts, retries, limits, health checks, load balancing, faults, rate limits.

Frozen, hashable dataclasses like the rest of the IR. Durations are integer milliseconds; ``None`` means "not
set" (Envoy's default applies). Policy plug-ins (:mod:`isthmus.policies`) fill these in on the base IR; the
translation modules (:mod:`isthmus.xds.translate`) turn them into Envoy fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KeyValues = tuple[tuple[str, str], ...]


# -- timeouts (MeshTimeout) ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timeouts:
    connect_ms: int | None = None  # cluster connect_timeout
    idle_ms: int | None = None  # TCP proxy / HTTP connection idle timeout
    request_ms: int | None = None  # route timeout (0 disables)
    stream_idle_ms: int | None = None  # HCM stream_idle_timeout
    max_stream_duration_ms: int | None = None
    max_connection_duration_ms: int | None = None
    request_headers_ms: int | None = None


# -- retries (MeshRetry) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpRetry:
    num_retries: int | None = None
    per_try_timeout_ms: int | None = None
    base_interval_ms: int | None = None
    max_interval_ms: int | None = None
    retry_on: tuple[str, ...] = ()  # Envoy retry_on conditions, e.g. "5xx", "reset", "retriable-status-codes"
    retriable_status_codes: tuple[int, ...] = ()
    retriable_methods: tuple[str, ...] = ()  # only these methods are retried (empty: all)


@dataclass(frozen=True)
class Retry:
    http: HttpRetry | None = None
    grpc: HttpRetry | None = None  # retry_on holds gRPC conditions ("cancelled", "unavailable", ...)
    tcp_max_connect_attempts: int | None = None


# -- circuit breaking (MeshCircuitBreaker) ------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int | None = None
    max_connection_pools: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class OutlierDetection:
    interval_ms: int | None = None
    base_ejection_time_ms: int | None = None
    max_ejection_percent: int | None = None
    split_external_and_local_errors: bool | None = None
    consecutive_5xx: int | None = None  # detectors.totalFailures
    consecutive_gateway_failure: int | None = None  # detectors.gatewayFailures
    consecutive_local_origin_failure: int | None = None  # detectors.localOriginFailures
    success_rate_minimum_hosts: int | None = None
    success_rate_request_volume: int | None = None
    success_rate_stdev_factor: int | None = None  # x1000, as Envoy wants it
    failure_percentage_threshold: int | None = None
    failure_percentage_minimum_hosts: int | None = None
    failure_percentage_request_volume: int | None = None


# -- active health checks (MeshHealthCheck) -----------------------------------------------------------------------
@dataclass(frozen=True)
class HealthCheck:
    interval_ms: int
    timeout_ms: int
    unhealthy_threshold: int
    healthy_threshold: int
    initial_jitter_ms: int | None = None
    interval_jitter_ms: int | None = None
    no_traffic_interval_ms: int | None = None
    reuse_connection: bool | None = None
    http_path: str | None = None  # set: an HTTP check
    http_expected_statuses: tuple[int, ...] = ()
    http_request_headers: KeyValues = ()
    tcp_send: str | None = None  # tcp check payload (text)
    tcp_receive: tuple[str, ...] = ()
    healthy_panic_threshold: float | None = None


# -- load balancing (MeshLoadBalancingStrategy) -------------------------------------------------------------------
@dataclass(frozen=True)
class HashPolicy:
    type: Literal["Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState"]
    name: str = ""
    ttl_ms: int | None = None  # cookie
    path: str | None = None  # cookie
    terminal: bool = False


@dataclass(frozen=True)
class Failover:
    """One ``crossZone.failover`` entry: for clients in ``from_zones`` (empty: any), the zones ``to`` names."""

    to_type: Literal["Any", "Only", "AnyExcept", "None"]
    to_zones: tuple[str, ...] = ()
    from_zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Locality:
    """MeshLoadBalancingStrategy ``localityAwareness`` (isthmus.ingress.locality turns it into priorities)."""

    disabled: bool = False
    failover: tuple[Failover, ...] | None = None  # None: every other zone in one failover priority
    threshold_percent: int | None = None  # crossZone.failoverThreshold.percentage
    affinity_tags: tuple[tuple[str, int | None], ...] = ()  # localZone.affinityTags (key, weight)


@dataclass(frozen=True)
class LoadBalancer:
    type: Literal["RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev"] = "RoundRobin"
    hash_policies: tuple[HashPolicy, ...] = ()
    choice_count: int | None = None  # LeastRequest
    active_request_bias: float | None = None  # LeastRequest
    min_ring_size: int | None = None  # RingHash
    max_ring_size: int | None = None  # RingHash
    hash_function: Literal["XXHash", "MurmurHash2"] | None = None  # RingHash
    table_size: int | None = None  # Maglev
    locality_aware: bool = False  # locality awareness hooks used by multi-zone
    locality: Locality | None = None  # localityAwareness as given (None: Kuma's default, local zone first)


# -- routes (MeshHTTPRoute, MeshTCPRoute) -------------------------------------------------------------------------
MatchType = Literal["Exact", "Prefix", "RegularExpression", "Present", "Absent"]


@dataclass(frozen=True)
class ValueMatch:
    name: str
    type: MatchType
    value: str = ""


@dataclass(frozen=True)
class RouteMatch:
    path_type: Literal["Exact", "PathPrefix", "RegularExpression"] | None = None
    path: str = ""
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True)
class HeaderModifier:
    set: KeyValues = ()
    add: KeyValues = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    status_code: int = 302
    path_full: str | None = None
    path_prefix: str | None = None


@dataclass(frozen=True)
class WeightedBackend:
    cluster: str
    weight: int


@dataclass(frozen=True)
class Mirror:
    cluster: str
    percent: float = 100.0


@dataclass(frozen=True)
class HttpRoute:
    name: str  # stable: "<policy>/<rule index>" or "default"
    matches: tuple[RouteMatch, ...] = ()  # empty: matches everything (prefix "/")
    backends: tuple[WeightedBackend, ...] = ()
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    rewrite_prefix: str | None = None
    rewrite_full_path: str | None = None
    rewrite_host: str | None = None
    rewrite_host_to_backend: bool = False
    redirect: Redirect | None = None
    mirrors: tuple[Mirror, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    stat_prefix: str = ""  # Envoy's per-route stats (vhost.<vhost>.route.<stat_prefix>.*); "": none


# -- inbound HTTP: faults (MeshFaultInjection) and local rate limits (MeshRateLimit) ------------------------------
@dataclass(frozen=True)
class FaultInjection:
    abort_status: int | None = None
    abort_percent: float = 0.0
    delay_ms: int | None = None
    delay_percent: float = 0.0
    response_bandwidth_kbps: int | None = None
    response_bandwidth_percent: float = 0.0
    clients: tuple[str, ...] = ()  # only these client SPIFFE IDs / kuma:// tag URIs (empty: every client)


@dataclass(frozen=True)
class LocalRateLimit:
    http_requests: int | None = None  # tokens per interval; None: no HTTP limit
    http_interval_ms: int | None = None
    http_status: int = 429
    http_response_headers: KeyValues = ()
    tcp_connections: int | None = None  # new connections per interval; None: no TCP limit
    tcp_interval_ms: int | None = None
