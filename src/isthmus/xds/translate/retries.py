"""MeshRetry -> Envoy: route retry policies (HTTP and gRPC) and TCP proxy connect attempts."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from isthmus.ir.model import Protocol
from isthmus.ir.traffic import HttpRetry, Retry
from isthmus.xds.translate.common import duration_ms

_METHOD_HEADER = ":method"


def _policy(conf: HttpRetry) -> route_components_pb2.RetryPolicy:
    policy = route_components_pb2.RetryPolicy(retry_on=",".join(conf.retry_on))
    if conf.num_retries is not None:
        policy.num_retries.value = conf.num_retries
    if conf.per_try_timeout_ms is not None:
        policy.per_try_timeout.CopyFrom(duration_ms(conf.per_try_timeout_ms))
    if conf.base_interval_ms is not None:
        policy.retry_back_off.base_interval.CopyFrom(duration_ms(conf.base_interval_ms))
        if conf.max_interval_ms is not None:  # never below the base (merged policies may cross them)
            longest = max(conf.max_interval_ms, conf.base_interval_ms)
            policy.retry_back_off.max_interval.CopyFrom(duration_ms(longest))
    policy.retriable_status_codes.extend(conf.retriable_status_codes)
    if conf.retriable_methods:
        policy.retriable_request_headers.append(
            route_components_pb2.HeaderMatcher(
                name=_METHOD_HEADER,
                string_match=string_pb2.StringMatcher(
                    # each method once: the regex stays within Envoy's program-size limit (all 9 methods: 46)
                    safe_regex=regex_pb2.RegexMatcher(regex="|".join(dict.fromkeys(conf.retriable_methods)))
                ),
            )
        )
    return policy


def route(action: route_components_pb2.RouteAction, retry: Retry | None, protocol: Protocol) -> None:
    """Set ``action.retry_policy``: gRPC conditions for HTTP/2 services when a gRPC section is set, else HTTP."""
    if retry is None:
        return
    conf = retry.grpc if protocol is Protocol.HTTP2 and retry.grpc is not None else retry.http
    if conf is None or conf.num_retries == 0:
        return
    action.retry_policy.CopyFrom(_policy(conf))


def tcp_proxy(proxy: tcp_proxy_pb2.TcpProxy, retry: Retry | None) -> None:
    if retry is not None and retry.tcp_max_connect_attempts is not None:
        proxy.max_connect_attempts.value = retry.tcp_max_connect_attempts
