"""MeshContext: every input of one mesh, indexed once and shared by all of its proxies.

Hashes, so that the generation loop rebuilds only the proxies whose inputs changed:

* ``hash`` covers every input of the mesh (the Mesh, its Dataplanes, its policies and the CA certificate);
* ``config_hash`` covers what every proxy of the mesh depends on (the Mesh, its policies, the CA certificate);
* ``service_digests`` has one digest per service over its endpoints (every inbound serving it, with tags,
  protocol and readiness).

A proxy's configuration is a function of ``config_hash``, its own Dataplane and the endpoints of the services
its clusters point at (IR clusters name their ``service``), so a new instance of one service changes only the
proxies that reach that service.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from isthmus.ingress.zones import RemoteZones, remote_zones
from isthmus.resources.dataplane import DataplaneSpec, InboundState
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import Resource


@dataclass(frozen=True)
class ServiceEndpoint:
    dataplane: str
    address: str
    port: int
    protocol: str
    tags: Mapping[str, str]
    ready: bool


@dataclass(frozen=True)
class MeshContext:
    name: str
    spec: MeshSpec
    dataplanes: Mapping[str, Resource]
    policies: Mapping[str, tuple[Resource, ...]]  # kind -> resources of that kind
    endpoints: Mapping[str, tuple[ServiceEndpoint, ...]]  # service -> every inbound serving it
    ca_certificate: str  # PEM of the mesh CA ("" when mTLS is off)
    hash: str
    config_hash: str = ""  # the Mesh, its policies and the CA: what every proxy depends on
    service_digests: Mapping[str, str] = field(default_factory=dict)  # service -> digest of its endpoints
    gateway_services: tuple[str, ...] = ()  # kuma.io/service of every gateway Dataplane (networking.gateway)
    zone: str = ""  # this control plane's zone ("" standalone: a proxy's zone is its kuma.io/zone tag)
    remote: RemoteZones = field(default_factory=RemoteZones)  # other zones' ingresses (isthmus.ingress)
    endpoint_zones: frozenset[str] = frozenset()  # the kuma.io/zone tags of the mesh's instances

    def policies_of(self, kind: str) -> tuple[Resource, ...]:
        return self.policies.get(kind, ())

    def service_protocol(self, service: str) -> str:
        """The protocol all instances agree on, else ``tcp`` (as Kuma does)."""
        protocols = {e.protocol for e in self.endpoints.get(service, ())}
        return protocols.pop() if len(protocols) == 1 else "tcp"


# the label ``isthmus dp run --proxy-type gateway`` sets to its --proxy-listen addresses (isthmus.dp.agent)
GATEWAY_LISTEN_LABEL = "isthmus.io/gateway-listen"


def gateway_listen(dp: Resource) -> tuple[str, int] | None:
    """The first proxy listener (host, port) of a gateway Dataplane that serves a Kong workspace, else None: other
    members of the mesh reach the gateway there (its mesh inbound shares that port, see isthmus.gateway.mesh_leg)."""
    first = dp.labels.get(GATEWAY_LISTEN_LABEL, "").split("_")[0]
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _digest(parts: object) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def build_mesh_context(
    mesh: Resource,
    dataplanes: Sequence[Resource],
    policies: Sequence[Resource],
    ca_certificate: str = "",
    ingresses: Sequence[Resource] = (),
    zone: str = "",
) -> MeshContext:
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    by_name = {dp.name: dp for dp in sorted(dataplanes, key=lambda d: d.name)}
    endpoints: dict[str, list[ServiceEndpoint]] = {}
    gateways: set[str] = set()
    for dp in by_name.values():
        dspec = dp.spec
        assert isinstance(dspec, DataplaneSpec)
        net = dspec.networking
        if net.gateway is not None:
            gateways.add(net.gateway.tags.get("kuma.io/service", ""))
            listen = gateway_listen(dp)
            if listen is not None and net.gateway.tags.get("kuma.io/service"):
                # a gateway serving Kong routes is an endpoint of its service (gateway to gateway by mesh name)
                endpoints.setdefault(net.gateway.tags["kuma.io/service"], []).append(
                    ServiceEndpoint(
                        dataplane=dp.name,
                        address=net.advertised_address or net.address,
                        port=listen[1],
                        protocol="http",
                        tags=dict(net.gateway.tags),
                        ready=True,
                    )
                )
        for inbound in net.inbound:
            if inbound.state is InboundState.IGNORED:
                continue  # Kuma: an Ignored inbound keeps its listener but is nobody's endpoint
            endpoints.setdefault(inbound.service, []).append(
                ServiceEndpoint(
                    dataplane=dp.name,
                    address=inbound.address or net.advertised_address or net.address,
                    port=inbound.port,
                    protocol=inbound.protocol,
                    tags=dict(inbound.tags),
                    ready=inbound.ready,
                )
            )
    by_kind: dict[str, list[Resource]] = {}
    for p in sorted(policies, key=lambda r: (r.type.kind, r.name)):
        by_kind.setdefault(p.type.kind, []).append(p)
    config = {
        "mesh": mesh.digest,
        "policies": [p.digest for ps in by_kind.values() for p in ps],
        "ca": ca_certificate,
        "gateways": sorted(gateways),  # every sidecar's inbound trusts their consumer headers
    }
    remote = remote_zones(mesh.name, ingresses)
    if remote.ingresses or remote.egresses or zone:
        config["zones"] = [zone, remote.addresses_digest()]  # where other zones' ingresses are
    config_hash = _digest(config)
    return MeshContext(
        name=mesh.name,
        spec=spec,
        dataplanes=by_name,
        policies={k: tuple(v) for k, v in by_kind.items()},
        endpoints={k: tuple(v) for k, v in sorted(endpoints.items())},
        ca_certificate=ca_certificate,
        hash=_digest([config_hash, [d.digest for d in by_name.values()]]),
        config_hash=config_hash,
        service_digests=_with_names(
            _with_remote({k: _endpoints_digest(v) for k, v in endpoints.items()}, remote),
            by_kind,
            [d.digest for d in by_name.values()],
        ),
        gateway_services=tuple(sorted(gateways - {""})),
        zone=zone,
        remote=remote,
        endpoint_zones=frozenset(e.tags.get("kuma.io/zone", "") for eps in endpoints.values() for e in eps),
    )


def _with_remote(digests: dict[str, str], remote: RemoteZones) -> dict[str, str]:
    """A service's digest covers its instances behind other zones' ingresses too."""
    for service in remote.by_service:
        digests[service] = _digest([digests.get(service, ""), remote.digest_of(service)])
    return digests


def _endpoints_digest(endpoints: Sequence[ServiceEndpoint]) -> str:
    parts = sorted(
        (e.address, e.port, e.protocol, e.ready, e.dataplane, sorted(e.tags.items())) for e in endpoints
    )
    return _digest(parts)


def _with_names(
    digests: dict[str, str], by_kind: Mapping[str, list[Resource]], dataplanes: list[str]
) -> dict[str, str]:
    """Digests for the clusters of MeshServices that select Dataplanes by anything but ``kuma.io/service``
    tags, and of MeshMultiZoneServices (isthmus.names): they change with any Dataplane of the mesh."""
    every = _digest(dataplanes)
    for kind in ("MeshService", "MeshMultiZoneService"):
        for res in by_kind.get(kind, []):
            selector = getattr(
                getattr(getattr(res.spec, "spec", None), "selector", None), "dataplane_tags", None
            )
            if kind == "MeshService" and selector == {"kuma.io/service": res.name}:
                continue
            digests[res.name] = _digest([digests.get(res.name, ""), every])
    return digests
