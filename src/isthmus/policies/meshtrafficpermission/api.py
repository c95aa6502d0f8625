"""Schema of ``MeshTrafficPermission`` (Kuma 2.x ``from`` form)."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from isthmus.resources.common import Model, TargetRef, TargetRefKind

TOP_LEVEL_KINDS = (
    TargetRefKind.MESH,
    TargetRefKind.MESH_SUBSET,
    TargetRefKind.MESH_SERVICE,
    TargetRefKind.MESH_SERVICE_SUBSET,
    TargetRefKind.DATAPLANE,
)
FROM_KINDS = (
    TargetRefKind.MESH,
    TargetRefKind.MESH_SUBSET,
    TargetRefKind.MESH_SERVICE,
    TargetRefKind.MESH_SERVICE_SUBSET,
)


class Action(str, Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"


class Conf(Model):
    action: Action


class From(Model):
    target_ref: TargetRef = Field(alias="targetRef")
    default: Conf


class MeshTrafficPermissionSpec(Model):
    target_ref: TargetRef = Field(
        default_factory=lambda: TargetRef(kind=TargetRefKind.MESH), alias="targetRef"
    )
    from_: list[From] = Field(alias="from", min_length=1)

    @model_validator(mode="after")
    def _kinds(self) -> MeshTrafficPermissionSpec:
        problems: list[str] = []
        for field, reason in self.target_ref.structural_errors(TOP_LEVEL_KINDS):
            problems.append(f"targetRef.{field}: {reason}")
        for i, item in enumerate(self.from_):
            for field, reason in item.target_ref.structural_errors(FROM_KINDS):
                problems.append(f"from[{i}].targetRef.{field}: {reason}")
        if problems:
            # one error per call keeps the field path exact; the first problem is the one to fix first
            raise ValueError(problems[0])
        return self
