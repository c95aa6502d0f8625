"""The ZoneIngresses a control plane holds, as one mesh's proxies see them (pure).

A sidecar reaches an instance of another zone through that zone's ingress: the ingress's public address
(``advertisedAddress:advertisedPort``) is the endpoint, weighted by the number of instances behind it
(``availableServices``, which the zone computes for its own ingresses, :mod:`isthmus.ingress.available`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from isthmus.resources.registry import Resource
from isthmus.resources.zone import ZoneEgressSpec, ZoneIngressSpec, public_address

SERVICE_TAG = "kuma.io/service"


@dataclass(frozen=True)
class IngressEndpoint:
    """Instances of one service (with these tags) behind one ingress of ``zone``."""

    zone: str
    address: str
    port: int
    instances: int
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RemoteZones:
    """What a mesh's proxies need of every zone's ingresses (the proxy's own zone is left out per proxy)."""

    by_service: Mapping[str, tuple[IngressEndpoint, ...]] = field(default_factory=dict)
    ingresses: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # zone -> addresses
    # zone -> (name, address, port) of its ZoneEgresses ("" : an egress of this control plane's zone that does
    # not name it); used when the mesh has routing.zoneEgress (isthmus.egress)
    egresses: Mapping[str, tuple[tuple[str, str, int], ...]] = field(default_factory=dict)
    names: Mapping[tuple[str, int], str] = field(default_factory=dict)  # ingress public address -> its name

    def digest_of(self, service: str) -> str:
        return _digest(
            [(e.zone, e.address, e.port, e.instances, e.tags) for e in self.by_service.get(service, ())]
        )

    def addresses_digest(self) -> str:
        return _digest(
            [sorted((z, list(a)) for z, a in self.ingresses.items()), sorted(self.egresses.items())]
        )

    def egresses_of(self, zone: str) -> tuple[tuple[str, str, int], ...]:
        """The egresses a proxy of ``zone`` leaves through: its zone's, else those that name no zone."""
        return self.egresses.get(zone) or self.egresses.get("", ())


def _digest(parts: object) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def remote_zones(mesh: str, ingresses: Sequence[Resource]) -> RemoteZones:
    by_service: dict[str, list[IngressEndpoint]] = {}
    addresses: dict[str, set[tuple[str, int]]] = {}
    egresses: dict[str, set[tuple[str, str, int]]] = {}
    names: dict[tuple[str, int], str] = {}
    for res in sorted(ingresses, key=lambda r: r.name):
        spec = res.spec
        if isinstance(spec, ZoneEgressSpec):
            owner = spec.zone or res.labels.get("kuma.io/zone", "")
            egresses.setdefault(owner, set()).add((res.name, spec.networking.address, spec.networking.port))
            continue
        if not isinstance(spec, ZoneIngressSpec):
            continue
        zone = spec.zone or res.labels.get("kuma.io/zone", "")
        public = public_address(spec)
        if not zone or public is None:
            continue  # Kuma: an ingress without its public address is not used yet
        addresses.setdefault(zone, set()).add(public)
        names[public] = res.labels.get("kuma.io/display-name", res.name)
        for available in spec.available_services:
            if available.mesh != mesh or available.external_service:
                continue
            service = available.tags.get(SERVICE_TAG)
            if not service or available.instances <= 0:
                continue
            by_service.setdefault(service, []).append(
                IngressEndpoint(
                    zone, public[0], public[1], available.instances, tuple(sorted(available.tags.items()))
                )
            )
    return RemoteZones(
        {k: tuple(v) for k, v in sorted(by_service.items())},
        {z: tuple(sorted(a)) for z, a in sorted(addresses.items())},
        {z: tuple(sorted(e)) for z, e in sorted(egresses.items())},
        names,
    )


def ingress_zone_of(res: Resource) -> str:
    spec = res.spec
    assert isinstance(spec, ZoneIngressSpec)
    return spec.zone or res.labels.get("kuma.io/zone", "")


def merged_endpoints(entries: Sequence[IngressEndpoint]) -> dict[tuple[str, str, int], int]:
    """(zone, address, port) -> instances, summed over the tag sets of one service behind each ingress."""
    out: dict[tuple[str, str, int], int] = {}
    for e in entries:
        key = (e.zone, e.address, e.port)
        out[key] = out.get(key, 0) + e.instances
    return out


def tags_match(entry: IngressEndpoint, subset: Mapping[str, str]) -> bool:
    tags = dict(entry.tags)
    return all(tags.get(k) == v for k, v in subset.items())
