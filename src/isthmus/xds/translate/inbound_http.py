"""Inbound HTTP filters from policies: local rate limits (MeshRateLimit) and fault injection
(MeshFaultInjection), placed after RBAC and before the router; and TCP connection rate limits.

A fault for particular clients acts only on requests whose ``x-forwarded-client-cert`` (set by the inbound from
the peer certificate, ``By=..;Hash=..;URI=<uri>;URI=<uri>``) holds every URI of that client as a whole element.
That test uses exact string matchers only (no regex: a regex holding a URI grows with it, and Envoy refuses one
whose RE2 program is larger than 100, a URI of ~66 characters), in a filter-level matcher that skips the fault
filter for other requests.
"""

from __future__ import annotations

from typing import TypeAlias

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_rl_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from isthmus.ir.model import InboundListener
from isthmus.ir.traffic import FaultInjection, LocalRateLimit
from isthmus.xds.translate.common import duration_ms, pack

FAULT = "envoy.filters.http.fault"
HTTP_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
TCP_RATE_LIMIT = "envoy.filters.network.local_ratelimit"
XFCC = "x-forwarded-client-cert"
XFCC_SEPARATORS = (";", ",")  # between the fields of one element, between elements

Predicate: TypeAlias = matcher_pb2.Matcher.MatcherList.Predicate


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
    return out


def _header_is(header: str, match: xds_string_pb2.StringMatcher) -> Predicate:
    return Predicate(
        single_predicate=Predicate.SinglePredicate(
            input=xds_extension_pb2.TypedExtensionConfig(
                name=header,
                typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=header)),
            ),
            value_match=match,
        )
    )


def element_forms(element: str) -> list[xds_string_pb2.StringMatcher]:
    """String matchers that together accept exactly the values holding ``element`` between separators (or at
    an end): what the regex ``(.*[;,])?<element>([;,].*)?`` accepts, with no regex. ``URI=spiffe://m/svc`` is
    not found in ``URI=spiffe://m/svc2``."""
    M = xds_string_pb2.StringMatcher
    out = [M(exact=element)]
    for after in XFCC_SEPARATORS:
        out.append(M(prefix=element + after))
    for before in XFCC_SEPARATORS:
        out.append(M(suffix=before + element))
        out.extend(M(contains=before + element + after) for after in XFCC_SEPARATORS)
    return out


def _clients_predicate(clients: tuple[str, ...]) -> Predicate:
    """The request comes from a client holding every one of ``clients`` (URIs) in its certificate."""
    per_uri = [
        Predicate(
            or_matcher=Predicate.PredicateList(
                predicate=[_header_is(XFCC, m) for m in element_forms(f"URI={uri}")]
            )
        )
        for uri in clients
    ]
    if len(per_uri) == 1:
        return per_uri[0]
    return Predicate(and_matcher=Predicate.PredicateList(predicate=per_uri))


def _only_for_clients(
    fault: fault_pb2.HTTPFault, clients: tuple[str, ...]
) -> extension_matcher_pb2.ExtensionWithMatcher:
    """The fault filter, skipped for requests that do not come from ``clients``."""
    skip = xds_extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=pack(skip_action_pb2.SkipFilter())
    )
    matcher = matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(
                    predicate=Predicate(not_matcher=_clients_predicate(clients)),
                    on_match=matcher_pb2.Matcher.OnMatch(action=skip),
                )
            ]
        )
    )
    return extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_pb2.TypedExtensionConfig(name=FAULT, typed_config=pack(fault)),
    )


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
        fault = _fault(f)
        config = pack(_only_for_clients(fault, f.clients) if f.clients else fault)
        out.append(hcm_pb2.HttpFilter(name=FAULT, typed_config=config))
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
