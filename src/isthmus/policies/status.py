"""A policy's status: do its targetRefs refer to things that exist, and which proxies does it select?

A policy whose target does not exist yet is accepted (it applies as soon as the target appears, as in Kuma);
this status is how users see that it currently selects nothing.
"""

from __future__ import annotations

from typing import Any

from isthmus.context.mesh_context import MeshContext
from isthmus.policies.engine import selects_proxy
from isthmus.policies.matching import tags_match
from isthmus.resources.common import TargetRef, TargetRefKind
from isthmus.resources.registry import Resource


def _ref_problem(ctx: MeshContext, ref: TargetRef) -> str | None:
    kind = ref.kind
    if kind in (TargetRefKind.MESH_SERVICE, TargetRefKind.MESH_SERVICE_SUBSET):
        instances = ctx.endpoints.get(ref.name or "", ())
        if not instances:
            return f"no data plane serves service {ref.name!r} yet"
        if kind is TargetRefKind.MESH_SERVICE_SUBSET and not any(
            tags_match(ref.tags, e.tags) for e in instances
        ):
            return f"no instance of {ref.name!r} has the tags {ref.tags}"
    elif kind is TargetRefKind.DATAPLANE:
        if ref.name is not None and ref.name not in ctx.dataplanes:
            return f"data plane {ref.name!r} does not exist yet"
        if ref.labels is not None and not any(
            tags_match(ref.labels, d.labels) for d in ctx.dataplanes.values()
        ):
            return f"no data plane has the labels {ref.labels}"
    elif kind is TargetRefKind.MESH_SUBSET:
        if not any(tags_match(ref.tags, e.tags) for es in ctx.endpoints.values() for e in es):
            return f"no inbound has the tags {ref.tags}"
    return None


def _entry(ctx: MeshContext, field: str, ref: TargetRef) -> dict[str, Any]:
    problem = _ref_problem(ctx, ref)
    out: dict[str, Any] = {
        "field": field,
        "targetRef": ref.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
    out["resolved"] = problem is None
    if problem:
        out["reason"] = problem
    return out


def policy_target_status(ctx: MeshContext, policy: Resource) -> dict[str, Any]:
    spec = policy.spec
    top = getattr(spec, "target_ref", None) or TargetRef(kind=TargetRefKind.MESH)
    refs = [_entry(ctx, "spec.targetRef", top)]
    for section, attr in (("to", "to"), ("from", "from_")):
        for i, item in enumerate(getattr(spec, attr, None) or []):
            refs.append(_entry(ctx, f"spec.{section}[{i}].targetRef", item.target_ref))
    selected = sorted(name for name, dp in ctx.dataplanes.items() if selects_proxy(top, dp))
    return {
        "type": policy.type.kind,
        "mesh": policy.mesh,
        "name": policy.name,
        "targetRefs": refs,
        "selectedDataplanes": selected,
        "ok": all(r["resolved"] for r in refs),
    }
