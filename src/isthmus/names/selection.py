"""Which Dataplane inbounds serve a MeshService port, and the labels HostnameGenerator selectors see."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from isthmus.resources.dataplane import DataplaneSpec, Inbound, InboundState
from isthmus.resources.meshservice import MeshServiceDocument, MeshServicePort
from isthmus.resources.registry import Resource

ORIGIN = "kuma.io/origin"
ZONE = "kuma.io/zone"
DISPLAY_NAME = "kuma.io/display-name"
NAMESPACE = "k8s.kuma.io/namespace"
MANAGED_BY = "kuma.io/managed-by"
ENV = "kuma.io/env"
MESH_LABEL = "kuma.io/mesh"
GENERATOR = "meshservice-generator"


def effective_labels(labels: Mapping[str, str], name: str, zone: str) -> dict[str, str]:
    """A resource's labels as selectors see them: one made here without Kuma's labels counts as this zone's
    (Kuma: no origin label means a local resource), displayed under its own name."""
    out = dict(labels)
    out.setdefault(ORIGIN, "zone")
    out.setdefault(DISPLAY_NAME, name)
    if out[ORIGIN] == "zone":
        out.setdefault(ZONE, zone)
    return out


def is_local(labels: Mapping[str, str]) -> bool:
    return labels.get(ORIGIN, "zone") == "zone"


@dataclass(frozen=True)
class ServedBy:
    dataplane: str
    service: str  # the inbound's kuma.io/service (its identity)
    address: str
    port: int
    ready: bool
    zone: str = ""


def selected_inbounds(ms: MeshServiceDocument, dp: Resource, spec: DataplaneSpec) -> list[Inbound]:
    """The inbounds of ``dp`` that ``ms`` selects (none: the Dataplane is not selected). Ignored inbounds never are."""
    sel = ms.spec.selector
    inbounds = [i for i in spec.networking.inbound if i.state is not InboundState.IGNORED]
    if sel.dataplane_tags is not None:
        tags = sel.dataplane_tags
        return [i for i in inbounds if all(i.tags.get(k) == v for k, v in tags.items())]
    if sel.dataplane_ref is not None:
        return inbounds if dp.name == sel.dataplane_ref.name else []
    if sel.dataplane_labels is not None:
        return inbounds if sel.dataplane_labels.matches(dp.labels) else []
    return []


def serves_port(inbound: Inbound, port: MeshServicePort) -> bool:
    """The inbound is the ``targetPort`` of ``port`` (its number, or its name; default: the port itself)."""
    target = port.target_port if port.target_port is not None else port.port
    if isinstance(target, int):
        return inbound.port == target
    return inbound.name == target


def endpoints(
    ms: MeshServiceDocument, port: MeshServicePort, dataplanes: Mapping[str, Resource]
) -> list[ServedBy]:
    """The inbounds of the selected Dataplanes that serve ``port`` (by ``targetPort``: a number or a name)."""
    out: list[ServedBy] = []
    for dp in dataplanes.values():
        spec = dp.spec
        if not isinstance(spec, DataplaneSpec):
            continue
        net = spec.networking
        for inbound in selected_inbounds(ms, dp, spec):
            if serves_port(inbound, port):
                out.append(
                    ServedBy(
                        dp.name,
                        inbound.service,
                        inbound.address or net.advertised_address or net.address,
                        inbound.port,
                        inbound.ready,
                        inbound.tags.get(ZONE, ""),
                    )
                )
    return out
