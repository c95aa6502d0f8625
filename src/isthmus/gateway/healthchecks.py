"""An Upstream's ``healthchecks`` as Envoy cluster configuration (pure; no I/O).

* ``active`` (probes) becomes one Envoy ``health_checks`` entry: ``type`` ``http``/``https`` an HTTP check of
  ``http_path`` with the ``headers`` and, as the Host header, the Upstream's ``host_header`` or else each target's
  host name (Kong's); ``https`` through a TLS socket of its own (``https_sni``, ``https_verify_certificate``
  against the system bundle), ``http``/``tcp`` in plain text even when the Service speaks TLS; ``tcp`` a connect
  check. ``healthy.http_statuses`` are the expected statuses, ``unhealthy.http_statuses`` the ones that count
  towards the failure threshold; ``healthy.successes`` is the healthy threshold; the failure threshold is the
  smallest non-zero of ``http_failures``, ``tcp_failures`` and ``timeouts``; ``timeout`` the probe's timeout.
  ``healthy.interval`` probes healthy targets, ``unhealthy.interval`` unhealthy ones; an interval of 0 is "never"
  as in Kong (active checks are off when both are 0). ``concurrency`` has no Envoy counterpart (Envoy probes each
  target on its own timer) and is accepted with no effect.
* ``passive`` (Kong's circuit breaker) becomes outlier detection: ``http_failures`` consecutive 5xx responses,
  ``tcp_failures`` / ``timeouts`` consecutive connection-level failures (Envoy's local-origin errors) eject a
  target. Kong never re-admits a target its passive checks took out (only active probes or an Admin API call do):
  the ejection lasts a year, and a successful active probe re-admits the target (Envoy's
  ``successful_active_health_check_uneject_host``), as Kong's active checks do.
* ``threshold``: Kong answers 503 when the healthy share of the Upstream falls below it. Envoy's panic threshold
  is set to it (Envoy's default, 50 %, would instead balance over unhealthy targets) with ``fail_traffic_on_panic``
  and an overprovisioning factor of 100 (Envoy's default 140 would inflate the healthy share).

Known differences: Envoy's failure threshold is one counter of consecutive failures of any kind, where Kong keeps
one per kind (HTTP, TCP, timeout); an active probe answering a status in neither list makes the target unhealthy
at once in Envoy (Kong ignores it); passive checks count every 5xx (not only ``unhealthy.http_statuses``) and no
4xx (so a listed 429 does not count); the threshold compares the healthy share of targets, not of their weights;
a consistent-hashing (ring hash) Upstream under its threshold balances over every target rather than failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Kong's 0 ("never"), where Envoy needs a duration or a count
NEVER = "31536000s"
NEVER_COUNT = 2**31 - 1
# the cluster's transport socket for active probes (matched by the health check's criteria, never by endpoints)
PROBE_SOCKET = "kong-healthcheck"
PROBE_CRITERIA = {"kong.healthcheck": "probe"}


def _section(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(section: Mapping[str, Any], key: str) -> float:
    value = section.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def status_ranges(statuses: Sequence[int]) -> list[dict[str, int]]:
    """HTTP statuses as Envoy's half-open ranges, consecutive statuses merged."""
    out: list[dict[str, int]] = []
    for status in sorted({int(s) for s in statuses}):
        if out and out[-1]["end"] == status:
            out[-1]["end"] = status + 1
        else:
            out.append({"start": status, "end": status + 1})
    return out


def _threshold(*counts: float) -> int:
    """The smallest non-zero count (Kong's 0 disables a counter), or "never"."""
    enabled = [int(c) for c in counts if c > 0]
    return min(enabled) if enabled else NEVER_COUNT


def active_enabled(healthchecks: Mapping[str, Any]) -> bool:
    active = _section(healthchecks.get("active"))
    return (
        _number(_section(active.get("healthy")), "interval") > 0
        or _number(_section(active.get("unhealthy")), "interval") > 0
    )


def passive_enabled(healthchecks: Mapping[str, Any]) -> bool:
    unhealthy = _section(_section(healthchecks.get("passive")).get("unhealthy"))
    kinds: tuple[str, ...] = ("tcp_failures", "timeouts")
    if _section(healthchecks.get("passive")).get("type", "http") != "tcp":
        kinds = ("http_failures", *kinds)
    return any(_number(unhealthy, k) > 0 for k in kinds)


def active_health_check(
    healthchecks: Mapping[str, Any], host_header: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(Envoy ``HealthCheck``, the probe's transport socket match or None), or None when active checks are off."""
    if not active_enabled(healthchecks):
        return None
    active = _section(healthchecks.get("active"))
    healthy = _section(active.get("healthy"))
    unhealthy = _section(active.get("unhealthy"))
    kind = str(active.get("type") or "http")
    healthy_interval = _number(healthy, "interval")
    unhealthy_interval = _number(unhealthy, "interval")
    check: dict[str, Any] = {
        "timeout": _duration(_number(active, "timeout") or 1),
        "interval": _duration(healthy_interval or unhealthy_interval),
        "unhealthy_interval": _duration(unhealthy_interval) if unhealthy_interval else NEVER,
        # Kong probes whether or not traffic flows (Envoy would wait 60 s between probes until it does)
        "no_traffic_interval": _duration(healthy_interval or unhealthy_interval),
        "healthy_threshold": int(_number(healthy, "successes")) or NEVER_COUNT,
        "reuse_connection": False,
        "transport_socket_match_criteria": dict(PROBE_CRITERIA),
    }
    if kind == "tcp":
        check["unhealthy_threshold"] = _threshold(
            _number(unhealthy, "tcp_failures"), _number(unhealthy, "timeouts")
        )
        check["tcp_health_check"] = {}
    else:
        check["unhealthy_threshold"] = _threshold(
            _number(unhealthy, "http_failures"),
            _number(unhealthy, "tcp_failures"),
            _number(unhealthy, "timeouts"),
        )
        http: dict[str, Any] = {
            "path": str(active.get("http_path") or "/"),
            "expected_statuses": status_ranges(healthy.get("http_statuses") or [200, 302]),
        }
        retriable = status_ranges(unhealthy.get("http_statuses") or ())
        if retriable:
            http["retriable_statuses"] = retriable
        if host_header:
            http["host"] = host_header
        headers = _section(active.get("headers"))
        if headers:
            http["request_headers_to_add"] = [
                {
                    "header": {"key": str(name), "value": str(value)},
                    "append_action": "APPEND_IF_EXISTS_OR_ADD",
                }
                for name, values in sorted(headers.items())
                for value in (values if isinstance(values, list) else [values])
            ]
        check["http_health_check"] = http
    if kind == "https":
        context: dict[str, Any] = {"@type": UPSTREAM_TLS}
        if active.get("https_sni"):
            context["sni"] = str(active["https_sni"])
        if active.get("https_verify_certificate", True) is not False:
            context["common_tls_context"] = {
                "validation_context": {"trusted_ca": {"filename": SYSTEM_CA_BUNDLE}}
            }
        socket = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    else:
        socket = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}
    return check, {"name": PROBE_SOCKET, "match": dict(PROBE_CRITERIA), "transport_socket": socket}


def outlier_detection(healthchecks: Mapping[str, Any]) -> dict[str, Any] | None:
    """Envoy's ``OutlierDetection`` for Kong's passive checks, or None when they are off."""
    if not passive_enabled(healthchecks):
        return None
    passive = _section(healthchecks.get("passive"))
    unhealthy = _section(passive.get("unhealthy"))
    http_failures = 0 if passive.get("type") == "tcp" else int(_number(unhealthy, "http_failures"))
    local = _threshold(_number(unhealthy, "tcp_failures"), _number(unhealthy, "timeouts"))
    out: dict[str, Any] = {
        "split_external_local_origin_errors": True,
        "consecutive_5xx": http_failures or NEVER_COUNT,
        "enforcing_consecutive_5xx": 100 if http_failures else 0,
        "consecutive_local_origin_failure": local,
        "enforcing_consecutive_local_origin_failure": 100 if local != NEVER_COUNT else 0,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "enforcing_failure_percentage": 0,
        "enforcing_failure_percentage_local_origin": 0,
        "max_ejection_percent": 100,
        "base_ejection_time": NEVER,
        "max_ejection_time": NEVER,
        "successful_active_health_check_uneject_host": True,
    }
    return out


def apply(cluster: dict[str, Any], healthchecks: Mapping[str, Any], host_header: str | None) -> None:
    """Add an Upstream's health checks to its Envoy ``cluster`` (a dict with its ``load_assignment``)."""
    probe = active_health_check(healthchecks, host_header)
    ejection = outlier_detection(healthchecks)
    if probe is None and ejection is None:
        return
    if probe is not None:
        check, socket = probe
        cluster["health_checks"] = [check]
        if socket is not None:
            cluster["transport_socket_matches"] = [socket]
        if not host_header:
            for locality in cluster["load_assignment"]["endpoints"]:
                for endpoint in locality["lb_endpoints"]:
                    hostname = endpoint["endpoint"].get("hostname")
                    if hostname:
                        endpoint["endpoint"]["health_check_config"] = {"hostname": hostname}
    if ejection is not None:
        cluster["outlier_detection"] = ejection
    threshold = _number(healthchecks, "threshold")
    common: dict[str, Any] = {"healthy_panic_threshold": {"value": threshold}}
    if threshold > 0:
        common["zone_aware_lb_config"] = {"fail_traffic_on_panic": True}
    cluster["common_lb_config"] = common
    cluster["load_assignment"]["policy"] = {"overprovisioning_factor": 100}


# -- checks at apply (Kong's schema for ``healthchecks``, and what Envoy cannot do) ----------------------------------

_TYPES = ("tcp", "http", "https", "grpc", "grpcs")
_COUNTERS = ("successes", "http_failures", "tcp_failures", "timeouts")


def _between(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _side_problems(side: Mapping[str, Any], active: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in side.items():
        if key == "interval":
            if not active:
                out[key] = "unknown field"
            elif not _between(value, 0, 65535):
                out[key] = "value should be between 0 and 65535"
        elif key in _COUNTERS:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                out[key] = "value should be between 0 and 255"
        elif key == "http_statuses":
            if not isinstance(value, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 999 for s in value
            ):
                out[key] = "expected an array of integers between 100 and 999"
    return out


def problems(healthchecks: Mapping[str, Any]) -> dict[str, Any]:
    """Kong's field errors for an Upstream's (defaults-merged) ``healthchecks``, nested as Kong's ``fields``;
    the probe types Isthmus cannot run (gRPC) are refused as not supported yet."""
    out: dict[str, Any] = {}
    threshold = healthchecks.get("threshold")
    if not _between(threshold, 0, 100):
        out["threshold"] = "value should be between 0 and 100"
    for mode in ("active", "passive"):
        section = healthchecks.get(mode)
        if not isinstance(section, Mapping):
            out[mode] = "expected a record"
            continue
        errors: dict[str, Any] = {}
        kind = section.get("type")
        if kind not in _TYPES:
            errors["type"] = "expected one of: " + ", ".join(_TYPES)
        elif kind in ("grpc", "grpcs"):
            errors["type"] = f"'{kind}' health checks are not supported yet"
        if mode == "active":
            timeout = section.get("timeout")
            if not _between(timeout, 0, 65535):
                errors["timeout"] = "value should be between 0 and 65535"
            concurrency = section.get("concurrency")
            if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
                errors["concurrency"] = "value should be between 1 and 2147483648"
            path = section.get("http_path")
            if not isinstance(path, str) or not path.startswith("/"):
                errors["http_path"] = "should start with: /"
            headers = section.get("headers")
            if headers is not None and not (
                isinstance(headers, Mapping)
                and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in headers.values())
            ):
                errors["headers"] = "expected a map of header names to arrays of strings"
        for side in ("healthy", "unhealthy"):
            value = section.get(side)
            if not isinstance(value, Mapping):
                errors[side] = "expected a record"
                continue
            side_errors = _side_problems(value, mode == "active")
            if side_errors:
                errors[side] = side_errors
        if errors:
            out[mode] = errors
    return out
