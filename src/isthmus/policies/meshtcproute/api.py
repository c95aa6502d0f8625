"""Schema of ``MeshTCPRoute`` (Kuma 2.x, sidecars): ``to[]{targetRef, rules[]{default{backendRefs[]}}}``."""

from __future__ import annotations

from pydantic import Field, model_validator

from isthmus.policies.meshhttproute.api import TO_KINDS, BackendRef
from isthmus.policies.sections import TOP_LEVEL_KINDS, mesh_ref
from isthmus.resources.common import Model, TargetRef


class RuleConf(Model):
    backend_refs: list[BackendRef] | None = Field(default=None, alias="backendRefs")


class Rule(Model):
    default: RuleConf

    @model_validator(mode="after")
    def _backends(self) -> Rule:
        refs = self.default.backend_refs
        if not refs:
            raise ValueError("default.backendRefs: must have at least one item")
        if not any(b.weight > 0 for b in refs):
            raise ValueError("default.backendRefs: at least one weight must be greater than 0")
        return self


class To(Model):
    target_ref: TargetRef = Field(alias="targetRef")
    rules: list[Rule] = Field(min_length=1)


class MeshTCPRouteSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To] = Field(min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> MeshTCPRouteSpec:
        for field, reason in self.target_ref.structural_errors(TOP_LEVEL_KINDS):
            raise ValueError(f"targetRef.{field}: {reason}")
        for i, item in enumerate(self.to):
            for field, reason in item.target_ref.structural_errors(TO_KINDS):
                raise ValueError(f"to[{i}].targetRef.{field}: {reason}")
        return self
