"""Schema of ``MeshProxyPatch``: Kuma's escape hatch that adds, patches or removes Envoy resources."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import mesh_ref, target_ref_problems
from isthmus.resources.common import FreeValue, Model, Tags, TargetRef
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import load_yaml


class ResourceOp(str, Enum):
    ADD = "Add"
    REMOVE = "Remove"
    PATCH = "Patch"


class FilterOp(str, Enum):
    ADD_FIRST = "AddFirst"
    ADD_BEFORE = "AddBefore"
    ADD_AFTER = "AddAfter"
    ADD_LAST = "AddLast"
    REMOVE = "Remove"
    PATCH = "Patch"


class JsonPatch(Model):
    op: str
    path: str
    value: FreeValue = None
    from_: str | None = Field(default=None, alias="from")

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in ("add", "remove", "replace"):
            raise ValueError("must be one of add, remove, replace")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be a JSON pointer starting with '/'")
        return v


class Match(Model):
    name: str | None = None
    origin: str | None = None
    listener_name: str | None = Field(default=None, alias="listenerName")
    route_configuration_name: str | None = Field(default=None, alias="routeConfigurationName")
    tags: Tags | None = None
    listener_tags: Tags | None = Field(default=None, alias="listenerTags")


class _Modification(Model):
    match: Match | None = None
    value: str | None = None
    json_patches: list[JsonPatch] | None = Field(default=None, alias="jsonPatches")

    @field_validator("value")
    @classmethod
    def _yaml(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parsed = load_yaml(v)  # no aliases, bounded nesting, plain JSON values
            except ResourceValidationError as exc:
                raise ValueError(f"is not valid YAML: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a YAML object (an Envoy resource or some of its fields)")
        return v


class ResourceModification(_Modification):
    operation: ResourceOp

    @model_validator(mode="after")
    def _needs(self) -> ResourceModification:
        if self.operation is ResourceOp.ADD and not self.value:
            raise ValueError("value: required with operation Add")
        if self.operation is ResourceOp.PATCH and not self.value and not self.json_patches:
            raise ValueError("value: Patch needs a value or jsonPatches")
        return self


class FilterModification(_Modification):
    operation: FilterOp

    @model_validator(mode="after")
    def _needs(self) -> FilterModification:
        if self.operation.value.startswith("Add") and not self.value:
            raise ValueError(f"value: required with operation {self.operation.value}")
        if self.operation in (FilterOp.ADD_BEFORE, FilterOp.ADD_AFTER) and not (
            self.match and self.match.name
        ):
            raise ValueError(f"match.name: required with operation {self.operation.value}")
        return self


class Modification(Model):
    cluster: ResourceModification | None = None
    listener: ResourceModification | None = None
    network_filter: FilterModification | None = Field(default=None, alias="networkFilter")
    http_filter: FilterModification | None = Field(default=None, alias="httpFilter")
    virtual_host: ResourceModification | None = Field(default=None, alias="virtualHost")

    @model_validator(mode="after")
    def _one(self) -> Modification:
        from isthmus.policies.regex import regex_problem
        from isthmus.xds.translate.known_types import unknown_type_urls
        from isthmus.xds.translate.patches import PatchError, check_value, json_patch_problem, regex_fields

        fields = {"cluster": "cluster", "listener": "listener", "network_filter": "networkFilter",
                  "http_filter": "httpFilter", "virtual_host": "virtualHost"}  # fmt: skip
        set_ = [k for k in fields if getattr(self, k)]
        if len(set_) != 1:
            raise ValueError(
                "exactly one of cluster, listener, networkFilter, httpFilter, virtualHost must be set"
            )
        kind = fields[set_[0]]
        mod = getattr(self, set_[0])
        if mod.value:
            try:
                message = check_value(kind, mod.value)
            except PatchError as exc:
                raise ValueError(f"{kind}.value: {str(exc).splitlines()[0]}") from None
            for where, pattern in regex_fields(message):
                problem = regex_problem(pattern)
                if problem:
                    raise ValueError(f"{kind}.value: {where} {problem}")
        for i, patch in enumerate(mod.json_patches or []):
            for where, _, reason in unknown_type_urls(patch.value):
                raise ValueError(f"{kind}.jsonPatches[{i}].value: {where}: {reason}")
        ops = [{"op": p.op, "path": p.path, "value": p.value} for p in mod.json_patches or []]
        failure = json_patch_problem(ops)  # what fails whatever the resource, e.g. a path through a number
        if failure is not None:
            raise ValueError(f"{kind}.jsonPatches[{failure[0]}].path: {failure[1]}")
        return self


class Conf(Model):
    append_modifications: list[Modification] = Field(alias="appendModifications", min_length=1)


class MeshProxyPatchSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    default: Conf

    @model_validator(mode="after")
    def _refs(self) -> MeshProxyPatchSpec:
        problem = target_ref_problems(self.target_ref, None, None, require_section=False)
        if problem:
            raise ValueError(problem)
        return self
