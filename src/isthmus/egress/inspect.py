"""What a zone ingress or egress serves, as ``GET /zoneingresses/{name}/_config`` and ``/zoneegresses/{name}/_config``
show it (and ``isthmus inspect zoneingress|zoneegress NAME``): one entry per SNI route with its destination, the
zones it reaches and the endpoints with their weights; and, for ``isthmus explain`` and ``isthmus inspect
dataplane NAME --zones``, a sidecar cluster's zones with priorities, weights and the zone proxies that carry
them (pure)."""

from __future__ import annotations

from typing import Any

from isthmus.context.mesh_context import MeshContext
from isthmus.egress.build import EgressIR
from isthmus.ingress.build import IngressIR
from isthmus.ir.model import Endpoint, ProxyIR


def _endpoint(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"address": e.address, "port": e.port, "weight": e.weight}
    if e.locality:
        out["zone"] = e.locality
    return out


def ingress_view(ir: IngressIR) -> dict[str, Any]:
    eps = {c.name: c.endpoints for c in ir.clusters}
    return {
        "zone": ir.zone,
        "address": f"{ir.address}:{ir.port}",
        "routes": [
            {
                "serverNames": list(r.server_names),
                "mesh": r.mesh,
                "destination": r.destination,
                "cluster": r.cluster,
                "terminate": False,
                "zones": [ir.zone] if ir.zone else [],
                "endpoints": [_endpoint(e) for e in eps.get(r.cluster, ())],
            }
            for r in ir.routes
        ],
    }


def egress_view(ir: EgressIR) -> dict[str, Any]:
    eps = {s.cluster: s.endpoints for s in ir.endpoints}
    static = {c.name: c.endpoints for c in ir.clusters if not c.eds}
    return {
        "zone": ir.zone,
        "address": f"{ir.address}:{ir.port}",
        "routes": [
            {
                "serverNames": list(c.server_names),
                "mesh": c.mesh,
                "destination": c.destination,
                "cluster": c.cluster,
                "terminate": c.terminate,  # the mesh's mTLS ends here (a MeshExternalService)
                "zones": list(c.zones),
                "endpoints": [_endpoint(e) for e in eps.get(c.cluster) or static.get(c.cluster, ())],
            }
            for c in ir.chains
        ],
    }


def cluster_zones(ir: ProxyIR, ctx: MeshContext, cluster: str) -> list[dict[str, Any]]:
    """A sidecar cluster's endpoints per (priority, zone), lowest priority first: the weight the zone carries (the
    sum of its endpoints' weights: instances behind a remote ingress), its share within its priority, and how it
    is reached (``direct``, ``ingress`` with the ingress names, or ``egress`` then ``ingress``)."""
    current = next((e for e in ir.endpoints if e.cluster == cluster), None)
    if current is None:
        c = next((c for c in ir.clusters if c.name == cluster), None)
        eps: tuple[Endpoint, ...] = c.endpoints if c is not None else ()
    else:
        eps = current.endpoints
    egress_names = {(a, p): n for es in ctx.remote.egresses.values() for n, a, p in es}
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    for e in eps:
        groups.setdefault((e.priority, e.locality), []).append(e)
    totals: dict[int, int] = {}
    for (priority, _), members in groups.items():
        totals[priority] = totals.get(priority, 0) + sum(e.weight for e in members)
    out = []
    for (priority, zone), members in sorted(groups.items()):
        weight = sum(e.weight for e in members)
        via: dict[str, Any] = {"type": "direct"}
        egresses = sorted(
            {egress_names[(e.address, e.port)] for e in members if (e.address, e.port) in egress_names}
        )
        ingresses = sorted(
            {
                ctx.remote.names[(e.address, e.port)]
                for e in members
                if (e.address, e.port) in ctx.remote.names
            }
        )
        if egresses:
            addresses = ctx.remote.ingresses.get(zone, ())
            via = {
                "type": "egress",
                "egresses": egresses,
                "ingresses": sorted(ctx.remote.names.get(a, f"{a[0]}:{a[1]}") for a in addresses),
            }
        elif ingresses:
            via = {"type": "ingress", "ingresses": ingresses}
        out.append(
            {
                "zone": zone,
                "priority": priority,
                "weight": weight,
                "percentOfPriority": round(100.0 * weight / (totals[priority] or 1), 2),
                "via": via,
                "endpoints": [
                    {
                        **_endpoint(e),
                        **({"subZone": e.sub_zone} if e.sub_zone else {}),
                        **({"localityWeight": e.locality_weight} if e.locality_weight else {}),
                    }
                    for e in members
                ],
            }
        )
    return out
