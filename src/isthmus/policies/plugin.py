"""The contract of a policy plug-in, and the helpers plug-ins share to edit a proxy's IR.

A plug-in is one module per policy kind (``isthmus.policies.<kind>.plugin``) exporting ``PLUGIN``: its resource
type (schema), its place in the order plug-ins run (Kuma's per-policy order: routes first, so that later
policies see the clusters routes create), and ``apply``, a pure function from the base IR and the policies of
its kind to the edited IR. Matching and merging are the engine's (:mod:`isthmus.policies.engine`); a plug-in
only turns the merged ``default`` into IR fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from isthmus.context.mesh_context import MeshContext
from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, EndpointSet, InboundListener, OutboundListener, ProxyIR
from isthmus.ir.traffic import HttpRoute
from isthmus.policies.engine import Resolved
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
    raise KeyError(listener.name)


def _targets_route(policy: Resource) -> bool:
    from isthmus.resources.common import TargetRefKind

    ref = getattr(policy.spec, "target_ref", None)
    return ref is not None and ref.kind is TargetRefKind.MESH_HTTP_ROUTE


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
        """A policy with ``targetRef: {kind: MeshHTTPRoute, name}`` and a top-level ``default``, on each route
        generated from that MeshHTTPRoute (``outbound`` already carries the outbound-level configuration)."""
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
        route_policies = [p for p in inputs.policies if _targets_route(p)]
        if route_policies:
            ir = map_outbounds(ir, lambda o: self._edit_routes(o, route_policies))
        return ir

    def _edit_routes(self, outbound: OutboundListener, policies: list[Resource]) -> OutboundListener:
        from isthmus.policies.engine import resolve_route

        routes = []
        for route in outbound.routes:
            resolved = resolve_route(policies, route.name)
            conf = parse_conf(self.conf_model, resolved)
            routes.append(route if conf is None else self.edit_route(route, outbound, conf, resolved))
        return evolve(outbound, routes=tuple(routes))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        from isthmus.policies.engine import dataplane_spec, resolve_from, resolve_to

        dp = inputs.dataplane
        net = dataplane_spec(dp).networking
        inbounds = []
        for inbound in net.inbound:
            resolved = resolve_from(inputs.policies, dp, inbound)
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
            resolved = resolve_to(inputs.policies, dp, outbound.service)
            if not resolved.empty:
                outbounds.append(
                    {
                        "port": outbound.port,
                        "service": outbound.service,
                        "conf": dict(resolved.conf),
                        "origins": [o.as_dict() for o in resolved.origins],
                    }
                )
        return {"inbounds": inbounds, "outbounds": outbounds}
