"""Inbound HTTP filters from policies: local rate limits (MeshRateLimit) and fault injection
(MeshFaultInjection), placed after RBAC and before the router; and TCP connection rate limits."""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_rl_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2

from isthmus.ir.model import InboundListener
from isthmus.ir.traffic import FaultInjection, LocalRateLimit
from isthmus.xds.translate.common import duration_ms, pack

FAULT = "envoy.filters.http.fault"
HTTP_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
TCP_RATE_LIMIT = "envoy.filters.network.local_ratelimit"
XFCC = "x-forwarded-client-cert"


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _bucket(tokens: int, interval_ms: int) -> token_bucket_pb2.TokenBucket:
    bucket = token_bucket_pb2.TokenBucket(fill_interval=duration_ms(interval_ms))
    bucket.max_tokens = max(tokens, 1) if tokens else 0
    bucket.tokens_per_fill.value = tokens
    return bucket


def _fault(f: FaultInjection) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if f.abort_status is not None:
        out.abort.http_status = f.abort_status
        out.abort.percentage.CopyFrom(_percent(f.abort_percent))
    if f.delay_ms is not None:
        out.delay.fixed_delay.CopyFrom(duration_ms(f.delay_ms))
        out.delay.percentage.CopyFrom(_percent(f.delay_percent))
    if f.response_bandwidth_kbps is not None:
        out.response_rate_limit.fixed_limit.limit_kbps = f.response_bandwidth_kbps
        out.response_rate_limit.percentage.CopyFrom(_percent(f.response_bandwidth_percent))
    for uri in f.clients:  # only this client: every one of its identities is in the forwarded certificate
        out.headers.append(
            route_components_pb2.HeaderMatcher(
                name=XFCC,
                string_match=string_pb2.StringMatcher(
                    safe_regex=regex_pb2.RegexMatcher(regex=f"(.*[;,])?URI={re.escape(uri)}([;,].*)?")
                ),
            )
        )
    return out


def _rate_limit(r: LocalRateLimit, stat_prefix: str) -> http_rl_pb2.LocalRateLimit:
    assert r.http_requests is not None and r.http_interval_ms is not None
    out = http_rl_pb2.LocalRateLimit(
        stat_prefix=stat_prefix,
        token_bucket=_bucket(r.http_requests, r.http_interval_ms),
        status=http_status_pb2.HttpStatus(code=r.http_status),  # type: ignore[arg-type]
    )
    for field in (out.filter_enabled, out.filter_enforced):
        field.runtime_key = f"{stat_prefix}_{'enabled' if field is out.filter_enabled else 'enforced'}"
        field.default_value.CopyFrom(percent_pb2.FractionalPercent(numerator=100))
    for key, value in r.http_response_headers:
        out.response_headers_to_add.append(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
        )
    return out


def http_filters(ir: InboundListener) -> list[hcm_pb2.HttpFilter]:
    """Filters in order: local rate limit first (a limited request is not delayed), then faults."""
    out = []
    if ir.rate_limit is not None and ir.rate_limit.http_requests is not None:
        config = _rate_limit(ir.rate_limit, f"inbound_{ir.port}_rate_limit")
        out.append(hcm_pb2.HttpFilter(name=HTTP_RATE_LIMIT, typed_config=pack(config)))
    for f in ir.faults:
        out.append(hcm_pb2.HttpFilter(name=FAULT, typed_config=pack(_fault(f))))
    return out


def network_filters(ir: InboundListener) -> list[listener_components_pb2.Filter]:
    """TCP inbound: the local rate limit on new connections, placed before the TCP proxy."""
    r = ir.rate_limit
    if r is None or r.tcp_connections is None or r.tcp_interval_ms is None:
        return []
    config = tcp_rl_pb2.LocalRateLimit(
        stat_prefix=f"inbound_{ir.port}_connection_limit",
        token_bucket=_bucket(r.tcp_connections, r.tcp_interval_ms),
    )
    return [listener_components_pb2.Filter(name=TCP_RATE_LIMIT, typed_config=pack(config))]
