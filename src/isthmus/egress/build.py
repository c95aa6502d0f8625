"""A zone egress's configuration (pure), as Kuma builds it: one TLS listener on ``networking.address:port``
(TLS inspector) whose filter chains match the SNI the zone's sidecars set, for every mesh with mTLS and
``routing.zoneEgress``:

* a service of another zone (``<service>{mesh=...}``, also per tag subset, or a MeshService's
  ``a<hash>.<name>.<port>.<mesh>.ms``): the connection passes, still encrypted, to the public addresses of that
  zone's ingresses (weighted by the instances behind each); the egress holds no key for it and the mTLS stays
  between the two sidecars;
* a MeshExternalService (``a<hash>.<name>.<port>.<mesh>.mes``): the egress terminates the sidecar's mTLS with its
  own certificate of the mesh (``spiffe://<mesh>/zone-egress``, clients of the mesh only), then reaches the
  service's endpoints with the service's own ``tls`` (or in plain text), HTTP through a connection manager,
  TCP as a TCP proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from isthmus.context.mesh_context import MeshContext
from isthmus.egress.node import egress_node_id
from isthmus.egress.route import egress_enabled, mes_sni
from isthmus.ingress.build import route_subsets
from isthmus.ingress.sni import legacy_sni, resource_sni
from isthmus.ingress.zones import merged_endpoints
from isthmus.ir.model import Cluster, Endpoint, EndpointSet, Protocol
from isthmus.ir.names import ExternalUpstream
from isthmus.names.outbounds import _external_tls, _protocol
from isthmus.resources.meshservice import MeshExternalServiceDocument, MeshServiceDocument
from isthmus.resources.registry import Resource
from isthmus.resources.zone import ZoneEgressSpec

ZONE_TAG = "kuma.io/zone"


@dataclass(frozen=True)
class EgressChain:
    """Connections whose SNI is one of ``server_names`` go to ``cluster``; ``terminate``: the mesh's mTLS ends
    here (a MeshExternalService), else the connection passes through."""

    server_names: tuple[str, ...]
    cluster: str
    mesh: str
    destination: str  # the service, ``MeshService <name>:<port>`` or ``MeshExternalService <name>``
    terminate: bool = False
    protocol: Protocol = Protocol.TCP
    zones: tuple[str, ...] = ()  # the zones whose ingresses carry it (passthrough chains)


@dataclass(frozen=True)
class EgressIR:
    node_id: str
    name: str
    zone: str
    address: str
    port: int
    chains: tuple[EgressChain, ...]
    clusters: tuple[Cluster, ...]
    endpoints: tuple[EndpointSet, ...]

    @property
    def meshes(self) -> tuple[str, ...]:
        """The meshes whose certificate the egress needs (it terminates their mTLS)."""
        return tuple(sorted({c.mesh for c in self.chains if c.terminate}))


def egress_zone_of(res: Resource, zone: str = "") -> str:
    spec = res.spec
    assert isinstance(spec, ZoneEgressSpec)
    return spec.zone or res.labels.get(ZONE_TAG, "") or zone


def _internal(
    mesh: str,
    ctx: MeshContext,
    own: str,
    chains: list[EgressChain],
    clusters: list[Cluster],
    sets: list[EndpointSet],
) -> None:
    subsets = route_subsets(ctx)  # the tag subsets routes name: each has its own SNI, as at the ingress
    for service, entries in sorted(ctx.remote.by_service.items()):
        remote = [e for e in entries if e.zone != own]
        if not remote:
            continue
        variants: list[tuple[tuple[str, str], ...]] = [(), *sorted(subsets.get(service, set()))]
        for subset in variants:
            wanted = dict(subset)
            matching = [e for e in remote if all(dict(e.tags).get(k) == v for k, v in wanted.items())]
            if not matching:
                continue
            suffix = "".join(f",{k}={v}" for k, v in subset)
            name = f"{mesh}:{service}{suffix}"
            eps = tuple(
                Endpoint(a, p, zone, weight=n)
                for (zone, a, p), n in sorted(merged_endpoints(matching).items())
            )
            chains.append(
                EgressChain(
                    (legacy_sni(service, mesh, wanted),),
                    name,
                    mesh,
                    service + (f" {dict(subset)}" if subset else ""),
                    zones=tuple(sorted({e.zone for e in matching})),
                )
            )
            clusters.append(Cluster(name=name, protocol=Protocol.TCP, eds=True, service=service))
            sets.append(EndpointSet(name, eps))
    for res in ctx.policies_of("MeshService"):
        owner = res.labels.get(ZONE_TAG, "")
        if res.labels.get("kuma.io/origin") == "global" or not owner or owner == own:
            continue
        addresses = ctx.remote.ingresses.get(owner, ())
        if not addresses:
            continue
        doc = res.spec
        assert isinstance(doc, MeshServiceDocument)
        display = res.labels.get("kuma.io/display-name", res.name)
        for port in doc.spec.ports:
            name = f"{mesh}:ms:{res.name}:{port.port}"
            chains.append(
                EgressChain(
                    (resource_sni("MeshService", display, mesh, port.port),),
                    name,
                    mesh,
                    f"MeshService {res.name}:{port.port}",
                    zones=(owner,),
                )
            )
            clusters.append(Cluster(name=name, protocol=Protocol.TCP, eds=True, service=res.name))
            sets.append(EndpointSet(name, tuple(Endpoint(a, p, owner) for a, p in addresses)))


def _external(mesh: str, ctx: MeshContext, chains: list[EgressChain], clusters: list[Cluster]) -> None:
    for res in ctx.policies_of("MeshExternalService"):
        doc = res.spec
        assert isinstance(doc, MeshExternalServiceDocument)
        spec = doc.spec
        resolve = any(not e.is_ip for e in spec.endpoints or [])
        protocol = _protocol(spec.match.protocol)
        name = f"{mesh}:mes:{res.name}"
        chains.append(
            EgressChain(
                (mes_sni(ctx, res.name, spec.match.port),),
                name,
                mesh,
                f"MeshExternalService {res.name}",
                terminate=True,
                protocol=protocol,
            )
        )
        clusters.append(
            Cluster(
                name=name,
                protocol=protocol,
                eds=False,
                endpoints=tuple(Endpoint(e.address, e.port) for e in spec.endpoints or []),
                service=res.name,
                external=ExternalUpstream(resolve_dns=resolve, tls=_external_tls(doc, resolve)),
            )
        )


def build_egress_ir(egress: Resource, contexts: Mapping[str, MeshContext], zone: str = "") -> EgressIR:
    """``zone``: the control plane's zone ("" standalone: the egress's own ``zone``)."""
    spec = egress.spec
    assert isinstance(spec, ZoneEgressSpec)
    own = egress_zone_of(egress, zone)
    chains: list[EgressChain] = []
    clusters: list[Cluster] = []
    sets: list[EndpointSet] = []
    for mesh, ctx in sorted(contexts.items()):
        if not egress_enabled(ctx):
            continue  # routing by SNI needs the clients' mTLS, and the mesh must ask for the egress (as Kuma)
        _internal(mesh, ctx, own, chains, clusters, sets)
        _external(mesh, ctx, chains, clusters)
    return EgressIR(
        node_id=egress_node_id(egress.name),
        name=egress.name,
        zone=own,
        address=spec.networking.address,
        port=spec.networking.port,
        chains=tuple(chains),
        clusters=tuple(clusters),
        endpoints=tuple(sets),
    )
