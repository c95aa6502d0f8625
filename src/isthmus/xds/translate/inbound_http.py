"""Inbound HTTP filters from policies: fault injection (MeshFaultInjection) and local rate limits
(MeshRateLimit), placed after RBAC and before the router; and TCP connection rate limits."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from isthmus.ir.model import InboundListener


def http_filters(ir: InboundListener) -> list[hcm_pb2.HttpFilter]:
    """Filters in order: local rate limit first (a limited request is not delayed), then faults."""
    return []


def network_filters(ir: InboundListener) -> list[listener_components_pb2.Filter]:
    """TCP inbound: the local rate limit on new connections, placed before the TCP proxy."""
    return []
