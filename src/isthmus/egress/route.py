"""A sidecar of a mesh with ``routing.zoneEgress: true`` (and mTLS) leaves its zone only through its zone's
egress, as Kuma does (applied after :func:`isthmus.ingress.remote.localize`):

* other zones: an endpoint of another zone (a remote ingress's public address) is replaced by the zone's
  egresses, keeping its zone (locality), priority and weight; the upstream TLS stays the sidecar's mTLS to the
  destination, with the SNI the egress and then the remote ingress route on (neither holds a key for it);
* a MeshExternalService: the cluster goes to the egresses with the sidecar's mTLS, verifying the egress's
  identity ``spiffe://<mesh>/zone-egress``, with the service's SNI (``a<hash>.<name>.<port>.<mesh>.mes``); the
  egress terminates that mTLS and reaches the service as its ``tls`` says.

A zone with no egress gets no endpoints for such traffic (Kuma: with zoneEgress on, nothing leaves the zone any
other way).
"""

from __future__ import annotations

import re
from dataclasses import replace

from isthmus.context.mesh_context import MeshContext
from isthmus.egress.node import egress_spiffe_id
from isthmus.ingress.sni import resource_sni
from isthmus.ir.model import Cluster, Endpoint, EndpointSet, MeshTls, ProxyIR

_MES_CLUSTER = re.compile(r"___extsvc_(\d+)$")


def egress_enabled(ctx: MeshContext) -> bool:
    routing = ctx.spec.routing
    return bool(routing is not None and routing.zone_egress) and ctx.spec.enabled_backend is not None


def mes_sni(ctx: MeshContext, name: str, port: int) -> str:
    """The SNI of MeshExternalService ``name`` (its display name when it came from the global)."""
    for res in ctx.policies_of("MeshExternalService"):
        if res.name == name:
            name = res.labels.get("kuma.io/display-name", res.name)
            break
    return resource_sni("MeshExternalService", name, ctx.name, port)


def _mesh_tls(ir: ProxyIR) -> MeshTls | None:
    return next((c.tls for c in ir.clusters if c.tls is not None), None) or next(
        (i.tls for i in ir.inbounds if i.tls is not None), None
    )


def _through(
    endpoints: tuple[Endpoint, ...], local: str, egresses: tuple[Endpoint, ...]
) -> tuple[Endpoint, ...]:
    """Endpoints of other zones replaced by the egresses: one per egress for each (zone, priority), weighted by
    the instances that zone's endpoints stood for."""
    out: list[Endpoint] = []
    remote: dict[tuple[int, str], tuple[int, int]] = {}  # (priority, zone) -> (weight, locality weight)
    for e in endpoints:
        if not e.locality or e.locality == local:
            out.append(e)
        else:
            key = (e.priority, e.locality)
            weight, group = remote.get(key, (0, 0))
            remote[key] = (weight + e.weight, max(group, e.locality_weight))
    for (priority, zone), (weight, group) in sorted(remote.items()):
        out.extend(
            replace(g, locality=zone, priority=priority, weight=weight, locality_weight=group)
            for g in egresses
        )
    return tuple(out)


def through_egress(ir: ProxyIR, ctx: MeshContext, local: str) -> ProxyIR:
    """The IR with other zones and MeshExternalServices reached through ``local``'s egresses."""
    if not egress_enabled(ctx):
        return ir
    egresses = tuple(Endpoint(a, p) for _, a, p in ctx.remote.egresses_of(local))
    tls = _mesh_tls(ir)
    sets = {e.cluster: e for e in ir.endpoints}
    clusters: list[Cluster] = []
    changed = False
    for cluster in ir.clusters:
        if cluster.external is not None and tls is not None:
            match = _MES_CLUSTER.search(cluster.name)
            port = int(match.group(1)) if match else 0
            cluster = replace(
                cluster,
                eds=False,
                endpoints=egresses,
                tls=tls,
                verify_spiffe_id=egress_spiffe_id(ctx.name),
                sni=mes_sni(ctx, cluster.service, port),
                external=None,
            )
            changed = True
        elif cluster.eds and cluster.tls is not None and cluster.name in sets:
            current = sets[cluster.name]
            moved = _through(current.endpoints, local, egresses)
            if moved != current.endpoints:
                sets[cluster.name] = EndpointSet(current.cluster, moved, current.overprovisioning)
                changed = True
        clusters.append(cluster)
    if not changed:
        return ir
    return replace(ir, clusters=tuple(clusters), endpoints=tuple(sets[e.cluster] for e in ir.endpoints))
