"""``explain``: what would happen to one request from a data plane to a service, without sending it.

Pure: it builds the caller's IR (the same IR its Envoy is configured from), picks the route the request would
match, lists the weighted backends and the timeouts, retries, limits and load balancing in effect, and then, on
each data plane serving the destination, whether the inbound's permissions admit the caller's identity and what
rate limits and faults apply there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from isthmus.context.mesh_context import MeshContext
from isthmus.egress.inspect import cluster_zones
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Cluster, OutboundListener
from isthmus.ir.traffic import HttpRoute, RouteMatch, ValueMatch
from isthmus.policies import regex
from isthmus.policies.engine import dataplane_spec
from isthmus.policies.meshtrafficpermission.plugin import identity_uri
from isthmus.resources.common import SERVICE_TAG

_PLACEHOLDER = Identity("", "")  # explain never translates secrets


class ExplainError(ValueError):
    """The question cannot be answered (unknown data plane or service); the message says why."""


def _value_matches(m: ValueMatch, actual: str | None) -> bool:
    if m.type == "Present":
        return actual is not None
    if m.type == "Absent":
        return actual is None
    if actual is None:
        return False
    if m.type == "Exact":
        return actual == m.value
    if m.type == "Prefix":
        return actual.startswith(m.value)
    return regex.fullmatch(m.value, actual)


def _path_matches(match: RouteMatch, path: str) -> bool:
    if match.path_type is None:
        return True
    if match.path_type == "Exact":
        return path == match.path
    if match.path_type == "PathPrefix":
        prefix = match.path.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")
    return regex.fullmatch(match.path, path)


def route_matches(match: RouteMatch, path: str, method: str, headers: Mapping[str, str]) -> bool:
    bare, _, query_text = path.partition("?")
    query = dict(part.partition("=")[::2] for part in query_text.split("&") if part)
    lowered = {k.lower(): v for k, v in headers.items()}
    return (
        _path_matches(match, bare)
        and (match.method is None or match.method.upper() == method.upper())
        and all(_value_matches(h, lowered.get(h.name.lower())) for h in match.headers)
        and all(_value_matches(q, query.get(q.name)) for q in match.query)
    )


def _select_route(
    outbound: OutboundListener, path: str, method: str, headers: Mapping[str, str]
) -> HttpRoute | None:
    for route in outbound.routes:
        if not route.matches or any(route_matches(m, path, method, headers) for m in route.matches):
            return route
    return None


def _plain(value: Any) -> Any:
    if value is None:
        return None
    return {k: v for k, v in dataclasses.asdict(value).items() if v not in (None, (), [], {})}


def _cluster_view(cluster: Cluster | None) -> dict[str, Any]:
    if cluster is None:
        return {}
    return {
        "service": cluster.service,  # where the requests go (a rule without backendRefs: the outbound's service)
        "connectTimeoutMs": cluster.connect_timeout_ms,
        "subset": dict(cluster.subset),
        "timeouts": _plain(cluster.timeouts),
        "connectionLimits": _plain(cluster.limits),
        "outlierDetection": _plain(cluster.outlier),
        "healthCheck": _plain(cluster.health_check),
        "loadBalancer": _plain(cluster.lb),
    }


def _caller_identities(ctx: MeshContext, caller: str) -> set[str]:
    net = dataplane_spec(ctx.dataplanes[caller]).networking
    uris = set()
    tag_sets = [inbound.tags for inbound in net.inbound]
    if net.gateway is not None:  # a gateway's certificate carries its gateway tags
        tag_sets.append(net.gateway.tags)
    for tags in tag_sets:
        for key, value in tags.items():
            uris.add(identity_uri(ctx.name, key, value))
    return uris


def explain(
    ctx: MeshContext,
    caller: str,
    service: str,
    *,
    path: str = "/",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    gateway_services: frozenset[str] = frozenset(),
    kong: Sequence[str] = (),
) -> dict[str, Any]:
    """``gateway_services``: a gateway proxy's mesh legs (the mesh services its Kong Services name, see
    :mod:`isthmus.gateway.mesh_leg`); ``kong``: what its Kong entities set over the mesh's policies for the leg to
    ``service`` (the Kong value wins), reported as ``kongOverrides``."""
    if caller not in ctx.dataplanes:
        raise ExplainError(f"from: data plane {caller!r} does not exist in mesh {ctx.name!r}")
    headers = dict(headers or {})
    mtls = ctx.spec.enabled_backend is not None
    ir = build_proxy_ir(ctx, caller, _PLACEHOLDER if mtls else None, gateway_services)
    outbound = next((o for o in ir.outbounds if o.service == service), None)
    if outbound is None:
        known = ", ".join(sorted({o.service for o in ir.outbounds})) or "none"
        raise ExplainError(f"to: {caller!r} has no outbound to service {service!r} (its outbounds: {known})")
    clusters = {c.name: c for c in ir.clusters}
    result: dict[str, Any] = {
        "mesh": ctx.name,
        "from": caller,
        "to": service,
        "request": {"path": path, "method": method, "headers": headers},
        "outbound": {"name": outbound.name, "protocol": outbound.protocol.value},
    }
    if kong:
        result["kongOverrides"] = list(kong)
    if outbound.protocol.value == "tcp":
        backends = outbound.tcp_backends or ()
        route_view: dict[str, Any] = {"name": "tcp", "matched": True}
    else:
        route = _select_route(outbound, path, method, headers)
        backends = route.backends if route is not None else ()
        route_view = {
            "name": route.name if route else "default",
            "matched": route is not None or not outbound.routes,
        }
        if route is not None:
            route_view.update(
                {
                    "redirect": _plain(route.redirect),
                    "requestHeaders": _plain(route.request_headers),
                    "rewrite": {
                        k: v
                        for k, v in {
                            "prefix": route.rewrite_prefix,
                            "fullPath": route.rewrite_full_path,
                            "host": route.rewrite_host,
                        }.items()
                        if v is not None
                    },
                }
            )
        timeouts = (route.timeouts if route and route.timeouts else None) or outbound.timeouts
        retry = (route.retry if route and route.retry else None) or outbound.retry
        result["timeouts"] = _plain(timeouts)
        result["retry"] = _plain(retry)
    backends_view: list[dict[str, Any]]
    if not backends:
        backends_view = [{"cluster": outbound.cluster, "weight": 1, "percent": 100.0}]
    else:
        total = sum(b.weight for b in backends) or 1
        backends_view = [
            {"cluster": b.cluster, "weight": b.weight, "percent": round(100.0 * b.weight / total, 2)}
            for b in backends
        ]
    for view in backends_view:
        view.update(_cluster_view(clusters.get(str(view["cluster"]))))
        view["zones"] = cluster_zones(
            ir, ctx, str(view["cluster"])
        )  # priority, weight, ingress/egress per zone
    result["route"] = route_view
    result["backends"] = backends_view
    result["destinations"] = _destinations(ctx, caller, service, backends_view, clusters)
    return result


def _destinations(
    ctx: MeshContext,
    caller: str,
    service: str,
    backends: list[dict[str, Any]],
    clusters: Mapping[str, Cluster],
) -> list[dict[str, Any]]:
    uris = _caller_identities(ctx, caller)
    mtls = ctx.spec.enabled_backend is not None
    out = []
    for name, dp in ctx.dataplanes.items():
        for inbound in dataplane_spec(dp).networking.inbound:
            if inbound.tags.get(SERVICE_TAG) != service:
                continue
            subsets = [dict(clusters[b["cluster"]].subset) for b in backends if b["cluster"] in clusters]
            reachable = not subsets or any(
                all(inbound.tags.get(k) == v for k, v in subset.items()) for subset in subsets
            )
            if not reachable:
                continue  # no backend of the route reaches this instance
            target_ir = build_proxy_ir(ctx, name, _PLACEHOLDER if mtls else None)
            listener = next((i for i in target_ir.inbounds if i.port == inbound.port), None)
            if listener is None:
                continue
            allowed = True if listener.permissions is None else listener.permissions.allow.matches(uris)
            out.append(
                {
                    "dataplane": name,
                    "inbound": listener.name,
                    "tags": dict(inbound.tags),
                    "allowed": allowed,
                    "permissionPolicies": list(listener.permissions.policies) if listener.permissions else [],
                    "timeouts": _plain(listener.timeouts),
                    "rateLimit": _plain(listener.rate_limit),
                    "faults": [_plain(f) for f in listener.faults],
                }
            )
    return out
