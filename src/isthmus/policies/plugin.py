"""The contract of a policy plug-in, and the helpers plug-ins share to edit a proxy's IR.

A plug-in is one module per policy kind (``isthmus.policies.<kind>.plugin``) exporting ``PLUGIN``: its resource
type (schema), its place in the order plug-ins run (Kuma's per-policy order: routes first, so that later
policies see the clusters routes create), and ``apply``, a pure function from the base IR and the policies of
its kind to the edited IR. Matching and merging are the engine's (:mod:`isthmus.policies.engine`); a plug-in
only turns the merged ``default`` into IR fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from isthmus.context.mesh_context import MeshContext
from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, EndpointSet, InboundListener, OutboundListener, ProxyIR
from isthmus.ir.traffic import HttpRoute
from isthmus.policies.engine import EMPTY, Origin, Resolved, merge_patch
from isthmus.resources.common import Model
from isthmus.resources.registry import Resource, ResourceType


@dataclass(frozen=True)
class PolicyInputs:
    """What a plug-in may read: the mesh, the proxy's Dataplane and the policies of its own kind."""

    ctx: MeshContext
    dataplane: Resource
    policies: tuple[Resource, ...]


class PolicyPlugin(Protocol):
    @property
    def resource_type(self) -> ResourceType: ...

    @property
    def order(self) -> int: ...

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR: ...

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        """The resolved configuration per inbound and outbound with its origins, for ``inspect --policies``."""
        ...


def policy_type(kind: str, plural: str, spec_model: type[Model], short_name: str = "") -> ResourceType:
    from isthmus.resources.registry import Scope

    return ResourceType(kind, plural, Scope.MESH, spec_model, is_policy=True, short_name=short_name)


T = TypeVar("T", bound=Model)
R = TypeVar("R")


def parse_conf(model: type[T], resolved: Resolved) -> T | None:
    """The merged ``default`` as the plug-in's typed model; None when no policy matched. Memoised: resolutions
    are shared by identity (see :func:`isthmus.policies.engine._memo`) and by content, so thousands of proxies
    share a handful of parsed configurations."""
    if resolved.empty:
        return None
    hit = _BY_IDENTITY.get((id(resolved), model))
    if hit is not None and hit[0] is resolved:
        return hit[1]  # type: ignore[return-value]
    key = json.dumps(resolved.conf, sort_keys=True, separators=(",", ":"))
    parsed = _parse_cached(model, key)
    if len(_BY_IDENTITY) >= _IDENTITY_LIMIT:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[(id(resolved), model)] = (resolved, parsed)
    return parsed  # type: ignore[return-value]


_BY_IDENTITY: dict[tuple[int, type[Model]], tuple[Resolved, Model]] = {}
_DERIVED: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def derived(fn: Callable[..., R], conf: Any, *args: Any) -> R:
    """``fn(conf, *args)``, memoised on the identity of ``conf`` (parsed confs are shared, see
    :func:`parse_conf`) and the hashable ``args``: converting a conf to IR happens once, not once per proxy."""
    key = (fn, id(conf), *args)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0] is conf:
        return hit[1]  # type: ignore[no-any-return]
    value = fn(conf, *args)
    if len(_DERIVED) >= _IDENTITY_LIMIT:
        _DERIVED.clear()
    _DERIVED[key] = (conf, value)
    return value


_IDENTITY_LIMIT = 50_000


@lru_cache(maxsize=8192)
def _parse_cached(model: type[Model], conf_json: str) -> Model:
    return model.model_validate(json.loads(conf_json))


# -- IR editing helpers ---------------------------------------------------------------------------------------
def map_clusters(ir: ProxyIR, edit: Callable[[Cluster], Cluster]) -> ProxyIR:
    return evolve(ir, clusters=tuple(edit(c) for c in ir.clusters))


def map_outbounds(ir: ProxyIR, edit: Callable[[OutboundListener], OutboundListener]) -> ProxyIR:
    return evolve(ir, outbounds=tuple(edit(o) for o in ir.outbounds))


def map_inbounds(ir: ProxyIR, edit: Callable[[InboundListener], InboundListener]) -> ProxyIR:
    return evolve(ir, inbounds=tuple(edit(i) for i in ir.inbounds))


def add_clusters(ir: ProxyIR, clusters: Mapping[str, tuple[Cluster, EndpointSet | None]]) -> ProxyIR:
    """Add clusters (and their EDS endpoint sets) the proxy does not have yet."""
    have = {c.name for c in ir.clusters}
    new = [(c, e) for name, (c, e) in sorted(clusters.items()) if name not in have]
    return evolve(
        ir,
        clusters=ir.clusters + tuple(c for c, _ in new),
        endpoints=ir.endpoints + tuple(e for _, e in new if e is not None),
    )


def inbound_of(inputs: PolicyInputs, listener: InboundListener) -> Any:
    """The Dataplane inbound a listener was built from (matched by port and address)."""
    from isthmus.policies.engine import dataplane_spec

    net = dataplane_spec(inputs.dataplane).networking
    for inbound in net.inbound:
        if inbound.port == listener.port and (inbound.address or net.address) == listener.address:
            return inbound
    if net.gateway is not None:  # a gateway's mesh inbound (isthmus.ir.build): selected by the gateway's tags
        from isthmus.resources.dataplane import Inbound

        tags = {**net.gateway.tags, "kuma.io/protocol": "http"}
        return Inbound.model_validate({"port": listener.port, "tags": tags})
    raise KeyError(listener.name)


def _targets_route(policy: Resource) -> bool:
    from isthmus.resources.common import TargetRefKind

    ref = getattr(policy.spec, "target_ref", None)
    return ref is not None and ref.kind is TargetRefKind.MESH_HTTP_ROUTE


def route_policy_name(route_name: str) -> str:
    """The MeshHTTPRoute a generated route came from (route names are ``<policy>/to[i]/rules[j]``)."""
    return route_name.split("/", 1)[0]


def resolve_route_items(policies: Iterable[Resource], route_name: str) -> Resolved:
    """The merged ``to`` items of the policies attached to the MeshHTTPRoute a route came from
    (``targetRef: {kind: MeshHTTPRoute, name}``; their ``to`` items are of kind Mesh, every destination of the
    route), in Kuma's order: by policy name, the lexicographically smaller name last and winning, then the item
    order within a policy."""
    from isthmus.policies.matching import target_ref_of

    owner = route_policy_name(route_name)
    attached = sorted(
        (p for p in policies if _targets_route(p) and target_ref_of(p).name == owner),
        key=lambda p: p.name,
        reverse=True,
    )
    key = (owner, *(p.digest for p in attached))
    found = _ROUTE_MEMO.get(key)
    if found is not None:
        return found
    conf: dict[str, Any] = {}
    origins: list[Origin] = []
    for policy in attached:
        for i, item in enumerate(getattr(policy.spec, "to", None) or []):
            dumped = item.default.model_dump(by_alias=True, exclude_none=True, mode="json")
            conf = merge_patch(conf, dumped)
            origins.append(Origin(policy.type.kind, policy.name, f"to[{i}]"))
    found = Resolved(conf, tuple(origins)) if origins else EMPTY
    if len(_ROUTE_MEMO) >= _IDENTITY_LIMIT:
        _ROUTE_MEMO.clear()
    _ROUTE_MEMO[key] = found
    return found


def route_resolution(policies: Iterable[Resource], route_name: str, outbound: Resolved) -> Resolved:
    """What a route generated from a MeshHTTPRoute gets: the outbound's resolution with the merged items of the
    policies attached to that MeshHTTPRoute on top. ``outbound`` itself (the same object) when none is."""
    own = resolve_route_items(policies, route_name)
    if own.empty:
        return outbound
    key = (id(outbound), id(own))
    hit = _COMBINED.get(key)
    if hit is not None and hit[0] is outbound and hit[1] is own:
        return hit[2]
    combined = Resolved(merge_patch(outbound.conf, own.conf), outbound.origins + own.origins)
    if len(_COMBINED) >= _IDENTITY_LIMIT:
        _COMBINED.clear()
    _COMBINED[key] = (outbound, own, combined)
    return combined


_ROUTE_MEMO: dict[tuple[str, ...], Resolved] = {}
_COMBINED: dict[tuple[int, int], tuple[Resolved, Resolved, Resolved]] = {}


class ToFromPlugin:
    """Base of the policies with ``to`` (outbound) and/or ``from`` (inbound) sections and a typed ``default``.

    Subclasses set ``resource_type``, ``order`` and ``conf_model`` and override the ``edit_*`` hooks they need;
    resolution (matching, precedence, merging) is the engine's. ``edit_cluster`` is called for every cluster of
    an outbound's destination service (route subsets included), with the conf resolved for that service.
    """

    resource_type: ResourceType
    order: int
    conf_model: type[Model]

    def edit_outbound(self, outbound: OutboundListener, conf: Any, resolved: Resolved) -> OutboundListener:
        return outbound

    def edit_cluster(self, cluster: Cluster, conf: Any, resolved: Resolved) -> Cluster:
        return cluster

    def edit_inbound(self, inbound: InboundListener, conf: Any, resolved: Resolved) -> InboundListener:
        return inbound

    def edit_local_cluster(self, cluster: Cluster, conf: Any, resolved: Resolved) -> Cluster:
        return cluster

    def edit_route(
        self, route: HttpRoute, outbound: OutboundListener, conf: Any, resolved: Resolved
    ) -> HttpRoute:
        """A policy attached to a MeshHTTPRoute (``targetRef: {kind: MeshHTTPRoute, name}``, ``to`` items of kind
        Mesh), on each route generated from that MeshHTTPRoute. ``conf`` is the outbound's merged configuration
        with the route's merged on top (Kuma computes a route's conf from every rule that includes it, the
        route-level ones most specific), so the hook sets the route's values from ``conf`` alone."""
        return route

    # -- resolution ---------------------------------------------------------------------------------------------
    def resolve_outbound(self, inputs: PolicyInputs, service: str) -> Resolved:
        from isthmus.policies.engine import resolve_to

        return resolve_to(inputs.policies, inputs.dataplane, service)

    def resolve_inbound(self, inputs: PolicyInputs, listener: InboundListener) -> Resolved:
        from isthmus.policies.engine import resolve_from

        return resolve_from(inputs.policies, inputs.dataplane, inbound_of(inputs, listener))

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        route_policies = [p for p in inputs.policies if _targets_route(p)]
        if route_policies:  # they configure routes only, never a whole outbound or inbound
            inputs = replace(inputs, policies=tuple(p for p in inputs.policies if not _targets_route(p)))
        by_service: dict[str, tuple[Any, Resolved]] = {}
        for outbound in ir.outbounds:
            if outbound.service not in by_service:
                resolved = self.resolve_outbound(inputs, outbound.service)
                by_service[outbound.service] = (parse_conf(self.conf_model, resolved), resolved)

        def outbound_edit(o: OutboundListener) -> OutboundListener:
            conf, resolved = by_service[o.service]
            return o if conf is None else self.edit_outbound(o, conf, resolved)

        by_local: dict[str, tuple[Any, Resolved]] = {}

        def inbound_edit(i: InboundListener) -> InboundListener:
            resolved = self.resolve_inbound(inputs, i)
            conf = parse_conf(self.conf_model, resolved)
            if conf is None:
                return i
            by_local[i.local_cluster] = (conf, resolved)
            return self.edit_inbound(i, conf, resolved)

        def cluster_edit(c: Cluster) -> Cluster:
            if c.service and c.service in by_service:
                conf, resolved = by_service[c.service]
                return c if conf is None else self.edit_cluster(c, conf, resolved)
            if c.name in by_local:
                conf, resolved = by_local[c.name]
                return self.edit_local_cluster(c, conf, resolved)
            return c

        ir = map_outbounds(ir, outbound_edit)
        ir = map_inbounds(ir, inbound_edit)
        ir = map_clusters(ir, cluster_edit)
        if route_policies:
            ir = map_outbounds(ir, lambda o: self._edit_routes(o, by_service[o.service][1], route_policies))
        return ir

    def _edit_routes(
        self, outbound: OutboundListener, outbound_resolved: Resolved, policies: list[Resource]
    ) -> OutboundListener:
        if not outbound.routes:
            return outbound
        routes = []
        for route in outbound.routes:
            resolved = route_resolution(policies, route.name, outbound_resolved)
            conf = parse_conf(self.conf_model, resolved) if resolved is not outbound_resolved else None
            routes.append(route if conf is None else self.edit_route(route, outbound, conf, resolved))
        return evolve(outbound, routes=tuple(routes))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        """Per inbound and outbound: the merged configuration and its origins; per outbound also ``routes``, the
        configuration of the policies attached to the MeshHTTPRoutes that make its routes (each route's own, which
        Envoy gets merged over the outbound's)."""
        from isthmus.policies.engine import dataplane_spec, resolve_from, resolve_to

        dp = inputs.dataplane
        route_policies = [p for p in inputs.policies if _targets_route(p)]
        policies = [p for p in inputs.policies if not _targets_route(p)]
        net = dataplane_spec(dp).networking
        inbounds = []
        for inbound in net.inbound:
            resolved = resolve_from(policies, dp, inbound)
            if not resolved.empty:
                inbounds.append(
                    {
                        "port": inbound.port,
                        "service": inbound.service,
                        "conf": dict(resolved.conf),
                        "origins": [o.as_dict() for o in resolved.origins],
                    }
                )
        outbounds = []
        for outbound in net.outbound:
            resolved = resolve_to(policies, dp, outbound.service)
            routes = _describe_routes(inputs, outbound.service, route_policies) if route_policies else []
            if resolved.empty and not routes:
                continue
            origins = [o.as_dict() for o in resolved.origins]
            origins += [o for r in routes for o in r["origins"] if o not in origins]
            entry: dict[str, Any] = {
                "port": outbound.port,
                "service": outbound.service,
                "conf": dict(resolved.conf),
                "origins": origins,
            }
            if routes:
                entry["routes"] = routes
            outbounds.append(entry)
        return {"inbounds": inbounds, "outbounds": outbounds}


def _describe_routes(inputs: PolicyInputs, service: str, policies: list[Resource]) -> list[dict[str, Any]]:
    """The routes of ``dp``'s outbound to ``service`` that have policies attached to their MeshHTTPRoute."""
    from isthmus.policies.meshhttproute.plugin import resolve_rules

    rules = resolve_rules(inputs.ctx.policies_of("MeshHTTPRoute"), inputs.dataplane, service) or ()
    out = []
    for rule in rules:
        own = resolve_route_items(policies, rule.name)
        if not own.empty:
            out.append(
                {"route": rule.name, "conf": dict(own.conf), "origins": [o.as_dict() for o in own.origins]}
            )
    return out
