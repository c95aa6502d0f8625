"""Schema of ``MeshTrafficPermission`` (Kuma 2.x ``from`` form)."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from isthmus.policies.sections import proxy_types_problem
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


class SpiffeIdType(str, Enum):
    EXACT = "Exact"
    PREFIX = "Prefix"


class SpiffeId(Model):
    type: SpiffeIdType
    value: str = Field(min_length=1)

    @model_validator(mode="after")
    def _scheme(self) -> SpiffeId:
        if not self.value.startswith("spiffe://"):
            raise ValueError("value: must be a SPIFFE ID (spiffe://...)")
        return self


class Match(Model):
    spiffe_id: SpiffeId = Field(alias="spiffeID")


class RuleConf(Model):
    allow: list[Match] | None = None
    deny: list[Match] | None = None
    allow_with_shadow_deny: list[Match] | None = Field(default=None, alias="allowWithShadowDeny")


class Rule(Model):
    default: RuleConf


class MeshTrafficPermissionSpec(Model):
    """Kuma 2.x ``from`` items, or the ``rules`` form of Kuma 2.12+ (the only one in 3.0), or both."""

    target_ref: TargetRef = Field(
        default_factory=lambda: TargetRef(kind=TargetRefKind.MESH), alias="targetRef"
    )
    from_: list[From] = Field(default_factory=list, alias="from")
    rules: list[Rule] | None = None

    @model_validator(mode="after")
    def _kinds(self) -> MeshTrafficPermissionSpec:
        problems: list[str] = []
        for field, reason in self.target_ref.structural_errors(TOP_LEVEL_KINDS):
            problems.append(f"targetRef.{field}: {reason}")
        problems += filter(None, [proxy_types_problem(self.target_ref, "targetRef", top_level=True)])
        for i, item in enumerate(self.from_):
            for field, reason in item.target_ref.structural_errors(FROM_KINDS):
                problems.append(f"from[{i}].targetRef.{field}: {reason}")
            problems += filter(
                None, [proxy_types_problem(item.target_ref, f"from[{i}].targetRef", top_level=False)]
            )
        if not self.from_ and not self.rules:
            problems.append("from: at least one of from and rules must have an item")
        if problems:
            # one error per call keeps the field path exact; the first problem is the one to fix first
            raise ValueError(problems[0])
        return self
