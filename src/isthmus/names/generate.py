"""MeshServices generated from Dataplanes (Kuma's Universal generator): one per ``kuma.io/service``.

Each inbound whose ``kuma.io/service`` is a DNS-1035 label (Kuma skips the others) gives a port
``{name: <inbound name or port>, port, targetPort: port, appProtocol: <kuma.io/protocol or tcp>}``; the first
Dataplane (by name) that serves a service decides its ports, or the stored ones when some Dataplane agrees with
them. Generated resources carry Kuma's labels (``kuma.io/managed-by: meshservice-generator``, origin zone,
display name, env universal, zone, mesh); only those are ever updated or deleted by the generator. A service no
Dataplane serves any more is labelled ``kuma.io/deletion-grace-period-started-at`` and deleted after the grace
period (Kuma's default: 1h).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from isthmus.names.selection import DISPLAY_NAME, ENV, GENERATOR, MANAGED_BY, MESH_LABEL, ORIGIN, ZONE

__all__ = ["GENERATOR", "GRACE_LABEL", "Desired", "desired", "grace_expired", "grace_stamp"]
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import Resource

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GRACE_LABEL = "kuma.io/deletion-grace-period-started-at"
DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class Desired:
    name: str
    spec: dict[str, Any]
    labels: dict[str, str]


def ports_of(dp: Resource) -> dict[str, list[dict[str, Any]]]:
    """service -> the MeshService ports this Dataplane's inbounds give it."""
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    out: dict[str, list[dict[str, Any]]] = {}
    for inbound in spec.networking.inbound:
        service = inbound.service
        if len(service) > 63 or not DNS_1035.match(service):
            continue
        proto = inbound.protocol if inbound.protocol in ("tcp", "http", "http2", "grpc") else "tcp"
        out.setdefault(service, []).append(
            {
                "name": inbound.name or str(inbound.port),
                "port": inbound.port,
                "targetPort": inbound.port,
                "appProtocol": proto,
            }
        )
    return out


def labels_for(mesh: str, name: str, zone: str) -> dict[str, str]:
    return {
        MESH_LABEL: mesh,
        DISPLAY_NAME: name,
        MANAGED_BY: GENERATOR,
        ENV: "universal",
        ZONE: zone,
        ORIGIN: "zone",
    }


def desired(
    mesh: str, dataplanes: Sequence[Resource], existing: Mapping[str, dict[str, Any]], zone: str
) -> dict[str, Desired]:
    """What the generator wants: service -> MeshService. ``existing``: name -> stored spec of the generated
    MeshServices (kept when some Dataplane agrees with its ports)."""
    candidates: dict[str, list[list[dict[str, Any]]]] = {}
    for dp in sorted(dataplanes, key=lambda d: d.name):
        if dp.spec.networking.gateway is not None:  # type: ignore[attr-defined]
            continue
        for service, ports in ports_of(dp).items():
            candidates.setdefault(service, []).append(ports)
    out: dict[str, Desired] = {}
    for service, options in candidates.items():
        stored = (existing.get(service) or {}).get("ports")
        ports = stored if stored in options else options[0]
        spec = {"selector": {"dataplaneTags": {"kuma.io/service": service}}, "ports": ports}
        out[service] = Desired(service, spec, labels_for(mesh, service, zone))
    return out


def grace_expired(labels: Mapping[str, str], now: datetime, grace: timedelta) -> bool:
    started = labels.get(GRACE_LABEL)
    if not started:
        return False
    try:
        at = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return True
    return now - at >= grace


def grace_stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
