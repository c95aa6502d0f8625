"""MeshLoadBalancingStrategy ``localityAwareness.localZone.affinityTags`` (Kuma's rules, MADR 043): inside the
proxy's own zone, endpoints that share the proxy's value of an affinity tag form a weighted group.

For each affinity tag in order whose key the proxy's inbounds carry, the group ``<key>=<proxy's value>`` gets the
tag's ``weight``, or by default ``9 * 10^(n - i - 1)`` for the i-th of n tags (900 / 90 / 9 for three: about
90 % / 9 % / 0.9 % of the traffic); an endpoint joins the first group whose tag it shares. Every other group (the
rest of the zone, other zones' priorities) weighs 1. Groups are Envoy localities (``subZone: <key>=<value>``)
weighed by Envoy's locality-weighted balancing, which the cluster turns on
(:mod:`isthmus.xds.translate.load_balancing`). Applied after the zone priorities (:mod:`isthmus.ingress.remote`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from isthmus.context.mesh_context import MeshContext
from isthmus.ir.model import Endpoint, EndpointSet, ProxyIR
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import Resource


def affinity_groups(
    affinity: tuple[tuple[str, int | None], ...], proxy_tags: Mapping[str, str]
) -> list[tuple[str, str, int]]:
    """(key, value, weight) of each affinity tag the proxy carries, in order."""
    n = len(affinity)
    return [
        (key, proxy_tags[key], weight if weight is not None else 9 * 10 ** (n - i - 1))
        for i, (key, weight) in enumerate(affinity)
        if key in proxy_tags
    ]


def group_endpoints(
    endpoints: tuple[Endpoint, ...],
    groups: list[tuple[str, str, int]],
    tags_of: Mapping[tuple[str, int], Mapping[str, str]],
    local: str,
) -> tuple[Endpoint, ...]:
    out = []
    for e in endpoints:
        sub_zone, weight = "", 1
        if e.priority == 0 and e.locality in ("", local):
            tags = tags_of.get((e.address, e.port), {})
            for key, value, w in groups:
                if tags.get(key) == value:
                    sub_zone, weight = f"{key}={value}", w
                    break
        out.append(replace(e, sub_zone=sub_zone, locality_weight=weight))
    return tuple(out)


def _proxy_tags(dp: Resource) -> dict[str, str]:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    out: dict[str, str] = {}
    for inbound in spec.networking.inbound:
        for key, value in inbound.tags.items():
            out.setdefault(key, value)  # Kuma takes the first value of a tag
    if spec.networking.gateway is not None:
        for key, value in spec.networking.gateway.tags.items():
            out.setdefault(key, value)
    return out


def apply_affinity(ir: ProxyIR, ctx: MeshContext, dp: Resource, local: str) -> ProxyIR:
    sets = {e.cluster: e for e in ir.endpoints}
    changed = False
    proxy_tags: dict[str, str] | None = None
    for cluster in ir.clusters:
        locality = cluster.lb.locality if cluster.lb is not None else None
        current = sets.get(cluster.name)
        if locality is None or not locality.affinity_tags or current is None or not cluster.service:
            continue
        if proxy_tags is None:
            proxy_tags = _proxy_tags(dp)
        groups = affinity_groups(locality.affinity_tags, proxy_tags)
        tags_of = {(e.address, e.port): e.tags for e in ctx.endpoints.get(cluster.service, ())}
        grouped = group_endpoints(current.endpoints, groups, tags_of, local)
        if grouped != current.endpoints:
            sets[cluster.name] = EndpointSet(current.cluster, grouped, current.overprovisioning)
            changed = True
    if not changed:
        return ir
    return replace(ir, endpoints=tuple(sets[e.cluster] for e in ir.endpoints))
