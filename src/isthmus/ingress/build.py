"""A zone ingress's configuration (pure): one TLS listener on ``networking.address:port`` whose filter chains
match the SNI of each destination in the zone (:mod:`isthmus.ingress.sni`) and pass the connection, still
encrypted, to that destination's local instances. The ingress holds no key and no certificate: the client's
and the server's sidecars do mTLS end to end through it.

Destinations: every ``kuma.io/service`` of a mesh with mTLS that has ready instances in the ingress's zone
(instances of other zones, in a control plane that serves several zones, are left out), and every port of the
mesh's MeshServices made in this zone. A service also gets one chain per tag subset the mesh's MeshHTTPRoutes and
MeshTCPRoutes send traffic to (``backendRefs`` with ``tags``): its SNI carries the tags
(``backend{mesh=default,version=v2}``, as the client's subset cluster sets it) and its cluster holds only the
local instances with those tags, so that a route to a subset is honoured past the ingress (as Kuma).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from isthmus.context.mesh_context import MeshContext
from isthmus.ingress.node import ingress_node_id
from isthmus.ingress.sni import legacy_sni, resource_sni
from isthmus.ingress.zones import ingress_zone_of
from isthmus.ir.model import Endpoint
from isthmus.names.selection import endpoints as ms_endpoints
from isthmus.policies.matching import tags_match
from isthmus.policies.meshhttproute.api import MeshHTTPRouteSpec
from isthmus.policies.meshtcproute.api import MeshTCPRouteSpec
from isthmus.resources.meshservice import MeshServiceDocument
from isthmus.resources.registry import Resource
from isthmus.resources.zone import ZoneIngressSpec

ZONE_TAG = "kuma.io/zone"
SERVICE_TAG = "kuma.io/service"
Subset = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class IngressRoute:
    """Connections whose SNI is one of ``server_names`` go to ``cluster``."""

    server_names: tuple[str, ...]
    cluster: str
    mesh: str
    destination: str  # the service, or ``MeshService <name>:<port>``


@dataclass(frozen=True)
class IngressCluster:
    name: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class IngressIR:
    node_id: str
    name: str
    zone: str
    address: str
    port: int
    routes: tuple[IngressRoute, ...]
    clusters: tuple[IngressCluster, ...]


def _in_zone(tag: str, zone: str) -> bool:
    return not tag or not zone or tag == zone


def _sorted(endpoints: set[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(sorted(endpoints, key=lambda e: (e.address, e.port)))


def route_subsets(ctx: MeshContext) -> dict[str, set[Subset]]:
    """service -> the tag subsets (sorted, without ``kuma.io/service``) the mesh's routes name as backends."""
    out: dict[str, set[Subset]] = {}
    for kind in ("MeshHTTPRoute", "MeshTCPRoute"):
        for res in ctx.policies_of(kind):
            spec = res.spec
            if not isinstance(spec, MeshHTTPRouteSpec | MeshTCPRouteSpec):
                continue
            for to in spec.to:
                for rule in to.rules:
                    for ref in rule.default.backend_refs or []:
                        tags = tuple(sorted((k, v) for k, v in (ref.tags or {}).items() if k != SERVICE_TAG))
                        if tags:
                            out.setdefault(ref.name, set()).add(tags)
    return out


def subset_cluster_name(mesh: str, service: str, tags: Subset) -> str:
    return f"{mesh}:{service}:" + ",".join(f"{k}={v}" for k, v in tags)


def build_ingress_ir(ingress: Resource, contexts: Mapping[str, MeshContext], zone: str = "") -> IngressIR:
    """``zone``: the control plane's zone ("" standalone: the ingress's own ``zone``)."""
    spec = ingress.spec
    assert isinstance(spec, ZoneIngressSpec)
    own = ingress_zone_of(ingress) or zone
    routes: list[IngressRoute] = []
    clusters: list[IngressCluster] = []
    for mesh, ctx in sorted(contexts.items()):
        if ctx.spec.enabled_backend is None:
            continue  # routing by SNI needs the clients' mTLS (as Kuma)
        subsets = route_subsets(ctx)
        for service, eps in ctx.endpoints.items():
            here = [e for e in eps if e.ready and _in_zone(e.tags.get(ZONE_TAG, ""), own)]
            local = _sorted({Endpoint(e.address, e.port) for e in here})
            if not local:
                continue
            name = f"{mesh}:{service}"
            routes.append(IngressRoute((legacy_sni(service, mesh),), name, mesh, service))
            clusters.append(IngressCluster(name, local))
            for tags in sorted(subsets.get(service, ())):
                selector = dict(tags)
                matching = _sorted(
                    {Endpoint(e.address, e.port) for e in here if tags_match(selector, e.tags)}
                )
                if not matching:
                    continue  # no instance of this zone has these tags: clients do not send them here
                name = subset_cluster_name(mesh, service, tags)
                routes.append(IngressRoute((legacy_sni(service, mesh, selector),), name, mesh, service))
                clusters.append(IngressCluster(name, matching))
        for res in ctx.policies_of("MeshService"):
            labels = res.labels
            if labels.get("kuma.io/origin") == "global" or not _in_zone(labels.get(ZONE_TAG, ""), own):
                continue  # another zone's MeshService
            doc = res.spec
            assert isinstance(doc, MeshServiceDocument)
            for port in doc.spec.ports:
                served = ms_endpoints(doc, port, ctx.dataplanes)
                local = _sorted(
                    {Endpoint(s.address, s.port) for s in served if s.ready and _in_zone(s.zone, own)}
                )
                if not local:
                    continue
                name = f"{mesh}:ms:{res.name}:{port.port}"
                sni = resource_sni(
                    "MeshService", labels.get("kuma.io/display-name", res.name), mesh, port.port
                )
                routes.append(IngressRoute((sni,), name, mesh, f"MeshService {res.name}:{port.port}"))
                clusters.append(IngressCluster(name, local))
    net = spec.networking
    return IngressIR(
        node_id=ingress_node_id(ingress.name),
        name=ingress.name,
        zone=own,
        address=net.address,
        port=net.port,
        routes=tuple(routes),
        clusters=tuple(clusters),
    )
