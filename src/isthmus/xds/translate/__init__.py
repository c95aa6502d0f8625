"""IR -> Envoy protobufs: pure functions, one module per feature.

:func:`translate` is the only entry point the control plane needs. Each IR node is frozen and hashable, so the
per-node builders are memoised: a cluster or endpoint set shared by many proxies is built once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from isthmus.ir.model import Cluster, EndpointSet, InboundListener, OutboundListener, ProxyIR, Secret
from isthmus.ir.transparent import TransparentProxy
from isthmus.xds import types
from isthmus.xds.snapshot import Resource
from isthmus.xds.translate import clusters, listeners, names, observability, secrets, transparent
from isthmus.xds.translate.patches import apply_patches

_cluster = lru_cache(maxsize=65536)(clusters.cluster)
_endpoints = lru_cache(maxsize=65536)(clusters.endpoints)
_inbound = lru_cache(maxsize=65536)(listeners.inbound)
_outbound = lru_cache(maxsize=65536)(listeners.outbound)
_routes = lru_cache(maxsize=65536)(listeners.outbound_routes)


def translate(ir: ProxyIR) -> dict[str, list[Any]]:
    """Envoy resources of one proxy, by type URL. The messages may be shared: never mutate them. MeshProxyPatch
    modifications, if any, are applied to copies."""
    tp = ir.transparent
    messages: dict[str, list[Any]] = {
        types.CLUSTER: [_cluster(c) for c in ir.clusters] + (list(transparent.clusters(tp)) if tp else []),
        types.ENDPOINT: [_endpoints(e) for e in ir.endpoints],
        types.LISTENER: observability.listeners(ir)
        + [_inbound(i) for i in ir.inbounds]
        + [_outbound(o) for o in ir.outbounds if o.port]
        + ([names.dns_listener(ir.dns)] if ir.dns is not None else [])
        + (list(transparent.listeners(tp)) if tp else []),
        types.ROUTE: [_routes(o) for o in ir.outbounds if o.route_config] + observability.gateway_routes(ir),
        types.SECRET: [secrets.secret(s) for s in ir.secrets],
    }
    messages[types.CLUSTER] = messages[types.CLUSTER] + observability.clusters(ir)  # MeshTrace, MeshAccessLog
    return apply_patches(messages, ir.patches) if ir.patches else messages


@lru_cache(maxsize=65536)
def _packed_cluster(node: Cluster) -> Resource:
    return Resource.of(types.CLUSTER, _cluster(node))


@lru_cache(maxsize=65536)
def _packed_endpoints(node: EndpointSet) -> Resource:
    return Resource.of(types.ENDPOINT, _endpoints(node))


@lru_cache(maxsize=65536)
def _packed_inbound(node: InboundListener) -> Resource:
    return Resource.of(types.LISTENER, _inbound(node))


@lru_cache(maxsize=65536)
def _packed_outbound(node: OutboundListener) -> Resource:
    return Resource.of(types.LISTENER, _outbound(node))


@lru_cache(maxsize=65536)
def _packed_routes(node: OutboundListener) -> Resource:
    return Resource.of(types.ROUTE, _routes(node))


@lru_cache(maxsize=64)
def _packed_transparent(node: TransparentProxy) -> tuple[tuple[Resource, ...], tuple[Resource, ...]]:
    """(clusters, listeners) of a transparent proxy's catch-alls, packed once per distinct setting."""
    return (
        tuple(Resource.of(types.CLUSTER, c) for c in transparent.clusters(node)),
        tuple(Resource.of(types.LISTENER, lst) for lst in transparent.listeners(node)),
    )


@lru_cache(maxsize=4096)
def _packed_secret(node: Secret) -> Resource:
    return Resource.of(types.SECRET, secrets.secret(node))


def translate_packed(ir: ProxyIR) -> dict[str, list[Resource]]:
    """The same resources as :func:`translate`, serialised and digested; shared IR nodes are packed once.
    A proxy with MeshProxyPatch modifications is translated, patched on copies, then packed."""
    if ir.patches:
        return {t: [Resource.of(t, m) for m in msgs] for t, msgs in translate(ir).items()}
    tp = ir.transparent
    return {
        types.CLUSTER: [Resource.of(types.CLUSTER, c) for c in observability.clusters(ir)]
        + [_packed_cluster(c) for c in ir.clusters]
        + (list(_packed_transparent(tp)[0]) if tp else []),
        types.ENDPOINT: [_packed_endpoints(e) for e in ir.endpoints],
        types.LISTENER: [Resource.of(types.LISTENER, m) for m in observability.listeners(ir)]
        + [_packed_inbound(i) for i in ir.inbounds]
        + [_packed_outbound(o) for o in ir.outbounds if o.port]  # port 0: a gateway's mesh leg
        + ([Resource.of(types.LISTENER, names.dns_listener(ir.dns))] if ir.dns is not None else [])
        + (list(_packed_transparent(tp)[1]) if tp else []),
        types.ROUTE: [_packed_routes(o) for o in ir.outbounds if o.route_config]
        + [Resource.of(types.ROUTE, r) for r in observability.gateway_routes(ir)],
        types.SECRET: [_packed_secret(s) for s in ir.secrets],
    }


__all__ = [
    "Cluster",
    "EndpointSet",
    "InboundListener",
    "OutboundListener",
    "Secret",
    "translate",
    "translate_packed",
]
