"""Pieces shared by resource models: base model config, names, tags, labels, addresses and targetRefs.

The character sets are Kuma's: resource names are lower-case RFC 1123 subdomains (at most 253 characters),
tag keys ``[a-zA-Z0-9.-_:/]`` and tag values ``[a-zA-Z0-9.-_:]`` (both non-empty). Mesh names are also DNS
labels without a dot, since a proxy's node id is ``<mesh>.<name>``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import check_plain

MAX_NAME_LENGTH = 253
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MESH_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:]+$")
LABEL_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]*$")
MAX_TAG_LENGTH = 253
FREE_FORM_DEPTH = 64  # free-form maps (logging, conf, probes...) nest at most this deep
SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
PROTOCOLS = ("tcp", "http", "http2", "grpc", "kafka")

NAME_RULE = (
    "must be at most 253 lower-case letters, digits, '-' or '.', each dot-separated part starting and ending "
    "with a letter or digit (a lower-case RFC 1123 subdomain)"
)
MESH_NAME_RULE = (
    "must be at most 253 lower-case letters, digits or '-', starting and ending with a letter or digit "
    "(no '.': a proxy's node id is <mesh>.<name>)"
)
TAG_KEY_RULE = "may only contain letters, digits and '.', '-', '_', ':', '/'"
TAG_VALUE_RULE = "may only contain letters, digits and '.', '-', '_', ':'"


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid resource name, or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_NAME_LENGTH or not NAME_RE.match(value):
        return NAME_RULE
    return None


def mesh_name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid mesh name, or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_NAME_LENGTH or not MESH_NAME_RE.match(value):
        return MESH_NAME_RULE
    return None


def check_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def check_mesh_name(value: str) -> str:
    problem = mesh_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _tag_problem(key: object, value: object) -> str | None:
    if not isinstance(key, str) or not key:
        return "tag key must be a non-empty string"
    if len(key) > MAX_TAG_LENGTH:
        return f"tag key {key[:40]!r}... is longer than {MAX_TAG_LENGTH} characters"
    if not TAG_KEY_RE.match(key):
        return f"tag key {key!r} {TAG_KEY_RULE}"
    if not isinstance(value, str) or not value:
        return f"tag {key!r} must have a non-empty value"
    if len(value) > MAX_TAG_LENGTH:
        return f"tag {key!r}: value is longer than {MAX_TAG_LENGTH} characters"
    if not TAG_VALUE_RE.match(value):
        return f"tag {key!r}: value {value!r} {TAG_VALUE_RULE}"
    return None


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        problem = _tag_problem(key, value)
        if problem:
            raise ValueError(problem)
    return tags


def _check_selector(tags: dict[str, str]) -> dict[str, str]:
    """Tags of a selector: at least one, and a value is a tag value or ``*`` (any non-empty value), as Kuma."""
    if not tags:
        raise ValueError("must have at least one tag")
    _check_tags({k: "any" if v == "*" else v for k, v in tags.items()})
    return tags


STORED = "stored"
"""Validation-context key set when a record is read back from the store (``registry.from_record``): fields that
are refused at apply as "not supported yet" still load from records written before the refusal existed."""


def applying(info: ValidationInfo) -> bool:
    """Whether the document is being applied (refusals hold), not read back from the store."""
    return not (isinstance(info.context, Mapping) and info.context.get(STORED))


def not_supported(what: str, why: str = "") -> str:
    """The reason for a field Isthmus refuses rather than accept and ignore."""
    return f"{what} is not supported yet" + (f" ({why})" if why else "")


def check_tag_value(value: str) -> str:
    """A value that ends up as a tag value (a service name, a section name)."""
    if len(value) > MAX_TAG_LENGTH:
        raise ValueError(f"is longer than {MAX_TAG_LENGTH} characters")
    if not TAG_VALUE_RE.match(value):
        raise ValueError(f"{value!r} {TAG_VALUE_RULE}")
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not key or len(key) > MAX_TAG_LENGTH or not TAG_KEY_RE.match(key):
            raise ValueError(
                f"label key {key[:60]!r} must be 1-{MAX_TAG_LENGTH} characters that {TAG_KEY_RULE}"
            )
        if len(value) > MAX_TAG_LENGTH or not LABEL_VALUE_RE.match(value):
            raise ValueError(
                f"label {key!r}: value {value[:60]!r} must be at most {MAX_TAG_LENGTH} letters, digits, "
                "'.', '-', '_', ':' or '/'"
            )
    return labels


def labels_problem(labels: object) -> str | None:
    """Why resource meta ``labels`` are not valid, or None."""
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        return "must be a map of string to string"
    try:
        _check_labels(labels)
    except ValueError as exc:
        return str(exc)
    return None


def _check_free_form(value: Any) -> Any:
    try:
        check_plain(value, max_depth=FREE_FORM_DEPTH)
    except ResourceValidationError as exc:
        raise ValueError(exc.errors[0].reason) from None
    return value


def check_ip(value: str) -> str:
    """An IPv4 or IPv6 address (no zone index, no host name)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value[:100]!r} is not a valid IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{value!r}: an IPv6 zone index is not supported")
    return value


def check_cidr(value: str) -> str:
    """An IPv4 or IPv6 network in CIDR notation (``10.0.0.0/8``); host bits must be zero."""
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value[:100]!r} is not a valid CIDR: {exc}") from None
    return value


ResourceName = Annotated[str, AfterValidator(check_name)]
MeshName = Annotated[str, AfterValidator(check_mesh_name)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Tags = Annotated[dict[str, str], AfterValidator(_check_tags)]
Selector = Annotated[dict[str, str], AfterValidator(_check_selector)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
IPAddress = Annotated[str, AfterValidator(check_ip)]
Cidr = Annotated[str, AfterValidator(check_cidr)]
TagValue = Annotated[str, Field(min_length=1), AfterValidator(check_tag_value)]
FreeForm = Annotated[dict[str, Any], AfterValidator(_check_free_form)]
"""A map Isthmus stores but does not interpret (Kuma's logging, probes, CA conf...): plain JSON, bounded depth."""
FreeValue = Annotated[Any, AfterValidator(_check_free_form)]


class Model(BaseModel):
    """Base of every spec model: camelCase aliases as in Kuma's YAML, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


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


class ProxyType(str, Enum):
    SIDECAR = "Sidecar"
    GATEWAY = "Gateway"


class TargetRef(Model):
    kind: TargetRefKind
    name: TagValue | None = None
    namespace: TagValue | None = None
    tags: Tags | None = None
    labels: Labels | None = None
    section_name: TagValue | None = Field(default=None, alias="sectionName")
    mesh: MeshName | None = None
    proxy_types: list[ProxyType] | None = Field(default=None, alias="proxyTypes")

    @field_validator("mesh")
    @classmethod
    def _no_mesh(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Kuma reserves targetRef.mesh for future use and refuses it with every kind
        if value is not None and applying(info):
            kind = info.data.get("kind")
            raise ValueError(f"must not be set with kind {getattr(kind, 'value', kind)}")
        return value

    @field_validator("namespace")
    @classmethod
    def _no_namespace(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not applying(info):
            return value
        kind = info.data.get("kind")
        if kind in (TargetRefKind.MESH, TargetRefKind.MESH_SUBSET, TargetRefKind.MESH_SERVICE_SUBSET):
            raise ValueError(f"must not be set with kind {kind.value}")  # Kuma's rule for these kinds
        raise ValueError(not_supported("namespace", "Isthmus resources have no namespaces"))

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
