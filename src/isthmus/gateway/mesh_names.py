"""Kong Services that name a mesh service by a generated hostname (pure; no I/O).

A HostnameGenerator writes each MeshService's hostnames in its ``status.addresses`` (``edge-gcp.svc.gcp.mesh.local``
for another zone's MeshService, with Kuma's default generators). A Kong Service whose host is one of them reaches
that MeshService's ``kuma.io/service`` over the mesh exactly as a ``<service>.mesh`` host does
(:mod:`isthmus.gateway.mesh_leg`): :func:`resolve` gives the gateway a view of its workspace's entities in which such a
Service's host reads ``<service>.mesh``. So the mesh leg (mTLS with the gateway's identity, the mesh's policies, the
endpoints of every zone) is the same whichever name the Kong Service uses. Known difference: the upstream request's
``Host`` is then ``<service>.mesh`` (Kong would send the hostname, unless ``preserve_host``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from isthmus.gateway.envoy_routes import MESH_DOMAIN
from isthmus.store.base import Record

SERVICE_TAG = "kuma.io/service"
Entities = Mapping[str, Mapping[str, Mapping[str, Any]]]


def hostname_services(meshservices: Iterable[Record]) -> dict[str, str]:
    """hostname -> ``kuma.io/service`` of one mesh's MeshService records (those selecting by that tag); a hostname
    two MeshServices claim for different services is left out."""
    out: dict[str, str] = {}
    clashes: set[str] = set()
    for record in sorted(meshservices, key=lambda r: r.name):
        selector = (record.spec.get("spec") or {}).get("selector") or {}
        service = (selector.get("dataplaneTags") or {}).get(SERVICE_TAG)
        if not isinstance(service, str) or not service:
            continue
        for address in (record.spec.get("status") or {}).get("addresses") or []:
            hostname = (
                str(address.get("hostname") or "").lower().rstrip(".") if isinstance(address, dict) else ""
            )
            if not hostname:
                continue
            if out.setdefault(hostname, service) != service:
                clashes.add(hostname)
    return {h: s for h, s in out.items() if h not in clashes}


def used(entities: Entities, hostnames: Mapping[str, str]) -> dict[str, str]:
    """The part of ``hostnames`` the workspace's Kong Services name."""
    hosts = {str(s.get("host") or "").lower() for s in entities.get("services", {}).values()}
    return {h: svc for h, svc in hostnames.items() if h in hosts}


def digest(hostnames: Mapping[str, str]) -> str:
    return (
        hashlib.sha256(json.dumps(sorted(hostnames.items())).encode()).hexdigest()[:16] if hostnames else ""
    )


def resolve(entities: Entities, hostnames: Mapping[str, str]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """A copy of the collections where each Service whose host is in ``hostnames`` has host ``<service>.mesh``
    (entities are replaced, never changed: the others are shared)."""
    out = {collection: dict(items) for collection, items in entities.items()}
    if not hostnames:
        return out
    services = out.get("services", {})
    for sid, service in list(services.items()):
        target = hostnames.get(str(service.get("host") or "").lower())
        if target is not None:
            services[sid] = {**service, "host": f"{target}{MESH_DOMAIN}"}
    return out
