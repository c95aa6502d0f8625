"""MeshContext: every input of one mesh, indexed once and shared by all of its proxies.

The content hash covers exactly what proxy configuration depends on (the Mesh, its Dataplanes, its policies and
the CA certificate), so a proxy whose mesh hash and certificate did not change is not regenerated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from isthmus.resources.dataplane import DataplaneSpec
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

    def policies_of(self, kind: str) -> tuple[Resource, ...]:
        return self.policies.get(kind, ())

    def service_protocol(self, service: str) -> str:
        """The protocol all instances agree on, else ``tcp`` (as Kuma does)."""
        protocols = {e.protocol for e in self.endpoints.get(service, ())}
        return protocols.pop() if len(protocols) == 1 else "tcp"


def _digest(parts: object) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def build_mesh_context(
    mesh: Resource,
    dataplanes: Sequence[Resource],
    policies: Sequence[Resource],
    ca_certificate: str = "",
) -> MeshContext:
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    by_name = {dp.name: dp for dp in sorted(dataplanes, key=lambda d: d.name)}
    endpoints: dict[str, list[ServiceEndpoint]] = {}
    for dp in by_name.values():
        dspec = dp.spec
        assert isinstance(dspec, DataplaneSpec)
        net = dspec.networking
        for inbound in net.inbound:
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
    content = {
        "mesh": mesh.digest,
        "dataplanes": [d.digest for d in by_name.values()],
        "policies": [p.digest for ps in by_kind.values() for p in ps],
        "ca": ca_certificate,
    }
    return MeshContext(
        name=mesh.name,
        spec=spec,
        dataplanes=by_name,
        policies={k: tuple(v) for k, v in by_kind.items()},
        endpoints={k: tuple(v) for k, v in sorted(endpoints.items())},
        ca_certificate=ca_certificate,
        hash=_digest(content),
    )
