"""``availableServices`` of a zone's own ingress (pure): per mesh and tag set, how many ready instances of the
zone serve it. Other zones weigh the ingress's endpoint by it (:mod:`isthmus.ingress.zones`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from isthmus.context.mesh_context import MeshContext

ZONE_TAG = "kuma.io/zone"


def available_services(contexts: Mapping[str, MeshContext], zone: str) -> list[dict[str, Any]]:
    counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for mesh, ctx in contexts.items():
        for eps in ctx.endpoints.values():
            for e in eps:
                tag = e.tags.get(ZONE_TAG, "")
                if not e.ready or (tag and zone and tag != zone):
                    continue
                key = (mesh, tuple(sorted(e.tags.items())))
                counts[key] = counts.get(key, 0) + 1
    return [{"tags": dict(tags), "instances": n, "mesh": mesh} for (mesh, tags), n in sorted(counts.items())]
