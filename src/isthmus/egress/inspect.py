"""What a zone ingress or egress serves, as ``GET /zoneingresses/{name}/_config`` and ``/zoneegresses/{name}/_config``
show it (and ``isthmus inspect zoneingress|zoneegress NAME``): one entry per SNI route with its destination, the
zones it reaches and the endpoints with their weights (pure)."""

from __future__ import annotations

from typing import Any

from isthmus.egress.build import EgressIR
from isthmus.ingress.build import IngressIR
from isthmus.ir.model import Endpoint


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
