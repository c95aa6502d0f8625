"""Pieces shared by resource models: base model config, names, tags and targetRefs."""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
PROTOCOLS = ("tcp", "http", "http2", "grpc", "kafka")


def check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            "must be 1-253 characters of letters, digits, '-', '_' or '.', starting and ending with a letter "
            "or digit"
        )
    return value


ResourceName = Annotated[str, AfterValidator(check_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not key:
            raise ValueError("tag key must not be empty")
        if not value:
            raise ValueError(f"tag {key!r} must have a non-empty value")
    return tags


Tags = Annotated[dict[str, str], AfterValidator(_check_tags)]


class Model(BaseModel):
    """Base of every spec model: camelCase aliases as in Kuma's YAML, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class TargetRefKind(str, Enum):
    MESH = "Mesh"
    DATAPLANE = "Dataplane"
    MESH_SUBSET = "MeshSubset"
    MESH_SERVICE = "MeshService"
    MESH_SERVICE_SUBSET = "MeshServiceSubset"
    MESH_HTTP_ROUTE = "MeshHTTPRoute"


# Kuma's specificity order of top-level targetRef kinds (api/common/v1alpha1/targetref.go): higher wins.
KIND_ORDER: dict[TargetRefKind, int] = {
    TargetRefKind.MESH: 1,
    TargetRefKind.DATAPLANE: 2,
    TargetRefKind.MESH_SUBSET: 3,
    TargetRefKind.MESH_SERVICE: 5,
    TargetRefKind.MESH_SERVICE_SUBSET: 8,
    TargetRefKind.MESH_HTTP_ROUTE: 9,
}


class TargetRef(Model):
    kind: TargetRefKind
    name: str | None = None
    namespace: str | None = None
    tags: Tags | None = None
    labels: dict[str, str] | None = None
    section_name: str | None = Field(default=None, alias="sectionName")
    mesh: str | None = None
    proxy_types: list[str] | None = Field(default=None, alias="proxyTypes")

    def structural_errors(self, allowed: tuple[TargetRefKind, ...]) -> list[tuple[str, str]]:
        """(field, reason) pairs for a targetRef that is well-typed but makes no sense for its kind."""
        errs: list[tuple[str, str]] = []
        if self.kind not in allowed:
            names = ", ".join(k.value for k in allowed)
            errs.append(("kind", f"value {self.kind.value!r} is not supported here; allowed: {names}"))
            return errs
        k = self.kind
        if k is TargetRefKind.MESH:
            for fname in ("name", "tags", "labels", "section_name"):
                if getattr(self, fname) is not None:
                    errs.append((_alias(fname), "must not be set with kind Mesh"))
        elif k is TargetRefKind.MESH_SUBSET:
            if self.name is not None:
                errs.append(("name", "must not be set with kind MeshSubset"))
            if not self.tags:
                errs.append(("tags", "must be set with kind MeshSubset"))
        elif k in (TargetRefKind.MESH_SERVICE, TargetRefKind.MESH_SERVICE_SUBSET):
            if not self.name:
                errs.append(("name", f"must be set with kind {k.value}"))
            if k is TargetRefKind.MESH_SERVICE and self.tags is not None:
                errs.append(("tags", "must not be set with kind MeshService"))
        elif k is TargetRefKind.DATAPLANE:
            if self.name and self.labels:
                errs.append(("labels", "must not be set together with name"))
            if self.tags is not None:
                errs.append(("tags", "must not be set with kind Dataplane"))
        return errs


def _alias(field: str) -> str:
    return {"section_name": "sectionName"}.get(field, field)
