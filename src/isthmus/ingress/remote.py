"""A sidecar's view of other zones, applied to its IR after the policy plug-ins (they decide the balancer):

* endpoints of a zone that has an ingress are reached through that ingress only: the ingress's public address
  replaces them, weighted by the instances behind it, and the cluster's upstream TLS carries the SNI the ingress
  routes on (:mod:`isthmus.ingress.sni`; a route's subset cluster names its tags in it, so that the ingress
  forwards only to the instances with those tags); mTLS stays end to end. Without mTLS nothing goes through an
  ingress (as Kuma: it routes by SNI, so cross-zone traffic needs mTLS);
* every endpoint carries its zone as its locality, and gets an Envoy priority from the cluster's
  MeshLoadBalancingStrategy ``localityAwareness`` (:mod:`isthmus.ingress.locality`): the proxy's zone first,
  other zones as failover.
"""

from __future__ import annotations

import re
from dataclasses import replace

from isthmus.context.mesh_context import MeshContext
from isthmus.egress.route import through_egress
from isthmus.ingress.affinity import apply_affinity
from isthmus.ingress.locality import assign_priorities, overprovisioning
from isthmus.ingress.sni import legacy_sni, resource_sni
from isthmus.ingress.zones import merged_endpoints, tags_match
from isthmus.ir.model import Cluster, Endpoint, EndpointSet, ProxyIR
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import Resource

ZONE_TAG = "kuma.io/zone"
_MS_CLUSTER = re.compile(r"_msvc_(\d+)$")


def proxy_zone(ctx: MeshContext, dp: Resource) -> str:
    """The zone of a proxy: its control plane's, else (one control plane for every zone) its kuma.io/zone tag."""
    if ctx.zone:
        return ctx.zone
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    net = spec.networking
    for inbound in net.inbound:
        if inbound.tags.get(ZONE_TAG):
            return inbound.tags[ZONE_TAG]
    if net.gateway is not None and net.gateway.tags.get(ZONE_TAG):
        return net.gateway.tags[ZONE_TAG]
    return ""


def _endpoint_zones(ctx: MeshContext, service: str) -> dict[tuple[str, int], str]:
    return {(e.address, e.port): e.tags.get(ZONE_TAG, "") for e in ctx.endpoints.get(service, ())}


def _meshservice(ctx: MeshContext, cluster: Cluster) -> tuple[Resource, int] | None:
    match = _MS_CLUSTER.search(cluster.name)
    if match is None:
        return None
    for res in ctx.policies_of("MeshService"):
        if res.name == cluster.service:
            return res, int(match.group(1))
    return None


def localize(ir: ProxyIR, ctx: MeshContext, dp: Resource) -> ProxyIR:
    """The IR with other zones' endpoints through their ingresses, localities and priorities (and affinity groups
    inside the zone, :mod:`isthmus.ingress.affinity`), and (a mesh with
    ``routing.zoneEgress``) through the zone's egress (:mod:`isthmus.egress.route`)."""
    local = proxy_zone(ctx, dp)
    return through_egress(apply_affinity(_by_zone(ir, ctx, local), ctx, dp, local), ctx, local)


def _by_zone(ir: ProxyIR, ctx: MeshContext, local: str) -> ProxyIR:
    sets = {e.cluster: e for e in ir.endpoints}
    remote_zones = set(ctx.remote.ingresses) - {local, ""}
    if not remote_zones and not (ctx.endpoint_zones - {local, ""}):
        return ir  # one zone: nothing to do (the common case stays as cheap as before)
    clusters: list[Cluster] = []
    changed = False
    for cluster in ir.clusters:
        current = sets.get(cluster.name)
        if not cluster.eds or current is None or cluster.external is not None or not cluster.service:
            clusters.append(cluster)
            continue
        zones = _endpoint_zones(ctx, cluster.service)
        eps: list[Endpoint] = []
        for e in current.endpoints:
            zone = e.locality or zones.get((e.address, e.port), "") or local
            if cluster.tls is not None and zone in remote_zones:
                continue  # that zone is reached through its ingress
            eps.append(replace(e, locality=zone))
        sni = ""
        if cluster.tls is not None and remote_zones:
            ms = _meshservice(ctx, cluster)
            if ms is not None:
                res, port = ms
                owner = res.labels.get(ZONE_TAG, "")
                if owner in remote_zones:
                    sni = resource_sni(
                        "MeshService", res.labels.get("kuma.io/display-name", res.name), ctx.name, port
                    )
                    eps.extend(Endpoint(a, p, owner) for a, p in ctx.remote.ingresses[owner])
            else:
                subset = dict(cluster.subset)
                entries = [
                    e
                    for e in ctx.remote.by_service.get(cluster.service, ())
                    if e.zone in remote_zones and tags_match(e, subset)
                ]
                if entries:
                    sni = legacy_sni(cluster.service, ctx.name, subset)
                    for (zone, address, port), count in sorted(merged_endpoints(entries).items()):
                        eps.append(Endpoint(address, port, zone, weight=count))
        locality = cluster.lb.locality if cluster.lb is not None else None
        prioritized = assign_priorities(tuple(eps), locality, local)
        factor = overprovisioning(locality)
        new_set = EndpointSet(cluster.name, prioritized, factor)
        if new_set != current:
            sets[cluster.name] = new_set
            changed = True
        if sni != cluster.sni:
            cluster = replace(cluster, sni=sni)
            changed = True
        clusters.append(cluster)
    if not changed:
        return ir
    return replace(ir, clusters=tuple(clusters), endpoints=tuple(sets[e.cluster] for e in ir.endpoints))
