"""MeshTimeout -> Envoy: cluster connect/idle timeouts, HCM stream timeouts, route timeouts, TCP idle timeouts."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ir.traffic import Timeouts
from isthmus.xds.translate.common import duration_ms


def http_protocol_options(t: Timeouts | None) -> protocol_pb2.HttpProtocolOptions | None:
    """Connection-level HTTP timeouts (idle, max connection duration), for clusters and HCMs alike."""
    if t is None or (
        t.idle_ms is None and t.max_connection_duration_ms is None and t.max_stream_duration_ms is None
    ):
        return None
    out = protocol_pb2.HttpProtocolOptions()
    if t.idle_ms is not None:
        out.idle_timeout.CopyFrom(duration_ms(t.idle_ms))
    if t.max_connection_duration_ms is not None:
        out.max_connection_duration.CopyFrom(duration_ms(t.max_connection_duration_ms))
    if t.max_stream_duration_ms is not None:
        out.max_stream_duration.CopyFrom(duration_ms(t.max_stream_duration_ms))
    return out


def cluster(out: cluster_pb2.Cluster, t: Timeouts | None) -> None:
    """Connect timeout is set from ``Cluster.connect_timeout_ms``; this adds nothing else at cluster level
    (HTTP connection options are set with the protocol options in :mod:`clusters`)."""
    if t is not None and t.connect_ms is not None:
        out.connect_timeout.CopyFrom(duration_ms(t.connect_ms))


def hcm(manager: hcm_pb2.HttpConnectionManager, t: Timeouts | None) -> None:
    if t is None:
        return
    if t.stream_idle_ms is not None:
        manager.stream_idle_timeout.CopyFrom(duration_ms(t.stream_idle_ms))
    if t.request_headers_ms is not None:
        manager.request_headers_timeout.CopyFrom(duration_ms(t.request_headers_ms))
    options = http_protocol_options(t)
    if options is not None:
        manager.common_http_protocol_options.CopyFrom(options)


def route(action: route_components_pb2.RouteAction, t: Timeouts | None) -> None:
    if t is None:
        return
    if t.request_ms is not None:
        action.timeout.CopyFrom(duration_ms(t.request_ms))
    if t.stream_idle_ms is not None:
        action.idle_timeout.CopyFrom(duration_ms(t.stream_idle_ms))
    if t.max_stream_duration_ms is not None:
        action.max_stream_duration.max_stream_duration.CopyFrom(duration_ms(t.max_stream_duration_ms))


def tcp_proxy(proxy: tcp_proxy_pb2.TcpProxy, t: Timeouts | None) -> None:
    if t is None:
        return
    if t.idle_ms is not None:
        proxy.idle_timeout.CopyFrom(duration_ms(t.idle_ms))
    if t.max_connection_duration_ms:  # 0s: no limit (Envoy's TCP proxy takes at least 1ms, or nothing)
        proxy.max_downstream_connection_duration.CopyFrom(duration_ms(t.max_connection_duration_ms))
