"""MeshRetry -> Envoy: route retry policies (HTTP and gRPC) and TCP proxy connect attempts."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ir.model import Protocol
from isthmus.ir.traffic import Retry


def route(action: route_components_pb2.RouteAction, retry: Retry | None, protocol: Protocol) -> None:
    """Set ``action.retry_policy`` from the HTTP (or, for HTTP/2 services, gRPC-aware) retry settings."""
    return None


def tcp_proxy(proxy: tcp_proxy_pb2.TcpProxy, retry: Retry | None) -> None:
    if retry is not None and retry.tcp_max_connect_attempts is not None:
        proxy.max_connect_attempts.value = retry.tcp_max_connect_attempts
