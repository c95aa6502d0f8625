"""Schema of ``MeshTCPRoute`` (Kuma 2.x, sidecars): ``to[]{targetRef, rules[]{default{backendRefs[]}}}``."""

from __future__ import annotations

from pydantic import Field, model_validator

from isthmus.policies.meshhttproute.api import TO_KINDS, BackendRef
from isthmus.policies.sections import TOP_LEVEL_KINDS, mesh_ref, target_ref_problems
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
        problem = target_ref_problems(
            self.target_ref, self.to, None, top_kinds=TOP_LEVEL_KINDS, to_kinds=TO_KINDS
        )
        if problem:
            raise ValueError(problem)
        return self
