"""Resource types, and conversion between Kuma's Universal documents, validated models and store records.

A Universal document is flat: ``type``, ``name``, ``mesh`` (for mesh-scoped types), ``labels``, then either the
spec fields at the top level (Mesh, Dataplane: Kuma's proto-based types) or a ``spec`` object (targetRef
policies).  The store keeps only the spec as a dict.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import cached_property
from typing import Any, Generic, TypeVar, cast

from pydantic import ValidationError

from isthmus.resources.common import STORED, Model, labels_problem, mesh_name_problem, name_problem
from isthmus.resources.errors import FieldError, ResourceValidationError, from_pydantic
from isthmus.resources.loading import check_plain, load_yaml_documents
from isthmus.store.base import Record

META_FIELDS = ("type", "name", "mesh", "labels", "creationTime", "modificationTime")


class Scope(str, Enum):
    GLOBAL = "Global"
    MESH = "Mesh"


class KdsScope(str, Enum):
    """Which way a kind syncs between the global and zone control planes (:mod:`isthmus.kds`)."""

    LOCAL = "local"  # never synced (internal records, Zone/ZoneInsight on the global)
    FROM_GLOBAL = "from-global"  # made on the global only; read-only copies in every zone
    FROM_GLOBAL_OR_ZONE = "from-global-or-zone"  # global copies in zones; a zone's own stay there
    FROM_ZONE = "from-zone"  # made in a zone; copies on the global (Dataplane)
    FROM_ZONE_TO_ALL = "from-zone-to-all"  # made in a zone; copies on the global and in every other zone


@dataclass(frozen=True)
class ResourceType:
    kind: str
    plural: str
    scope: Scope
    spec_model: type[Model]
    spec_at_top_level: bool = False
    is_policy: bool = False
    internal: bool = False  # kept in the store, never served by the API (CA keys)
    short_name: str = ""
    # how multi-zone sync treats the kind; None: FROM_GLOBAL_OR_ZONE for policies, LOCAL for the rest
    kds_scope: KdsScope | None = None

    @property
    def sync(self) -> KdsScope:
        if self.kds_scope is not None:
            return self.kds_scope
        return KdsScope.FROM_GLOBAL_OR_ZONE if self.is_policy else KdsScope.LOCAL


SpecT = TypeVar("SpecT", bound=Model)
OtherSpecT = TypeVar("OtherSpecT", bound=Model)


@dataclass(frozen=True)
class Resource(Generic[SpecT]):
    """A validated resource: meta plus a frozen spec model (``Resource[DataplaneSpec]`` and so on)."""

    type: ResourceType
    mesh: str
    name: str
    spec: SpecT
    labels: Mapping[str, str] = field(default_factory=dict)

    def spec_dict(self) -> dict[str, Any]:
        return self.spec.model_dump(by_alias=True, exclude_none=True, mode="json")

    def narrow(self, model: builtins.type[OtherSpecT]) -> Resource[OtherSpecT]:
        """This resource typed by its spec model; TypeError when the spec is of another model."""
        if not isinstance(self.spec, model):
            raise TypeError(
                f"{self.type.kind} {self.name!r}: spec is {type(self.spec).__name__}, not {model.__name__}"
            )
        return cast("Resource[OtherSpecT]", self)

    @cached_property
    def digest(self) -> str:
        """sha256 of the resource's identity, labels and spec in canonical JSON; computed once per object."""
        own = getattr(self.spec, "digest_content", None)  # a model may leave out what configures nothing
        body = own() if callable(own) else self.spec_dict()
        content = [self.type.kind, self.mesh, self.name, dict(sorted(self.labels.items())), body]
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Registry:
    def __init__(self, types: Iterable[ResourceType]) -> None:
        self._by_kind: dict[str, ResourceType] = {}
        self._by_plural: dict[str, ResourceType] = {}
        for t in types:
            self._by_kind[t.kind] = t
            self._by_plural[t.plural] = t

    def kind(self, kind: str) -> ResourceType | None:
        return self._by_kind.get(kind)

    def plural(self, plural: str) -> ResourceType | None:
        return self._by_plural.get(plural)

    def lookup(self, word: str) -> ResourceType | None:
        """Find a type by plural (``dataplanes``), singular (``dataplane``) or kind (``Dataplane``)."""
        low = word.lower()
        for t in self._by_kind.values():
            if low in (t.plural, t.kind.lower(), t.plural.rstrip("s"), t.short_name):
                return t
        return None

    def all(self) -> list[ResourceType]:
        return list(self._by_kind.values())

    def public(self) -> list[ResourceType]:
        return [t for t in self._by_kind.values() if not t.internal]

    def policies(self) -> list[ResourceType]:
        return [t for t in self._by_kind.values() if t.is_policy]


def _check_meta_name(errors: list[FieldError], field_name: str, value: Any, *, mesh: bool = False) -> str:
    """Kuma's name rule (a lower-case RFC 1123 subdomain); a mesh name is a single DNS label (no '.')."""
    problem = mesh_name_problem(value) if mesh else name_problem(value)
    if problem:
        errors.append(FieldError(field_name, problem))
        return value if isinstance(value, str) else ""
    return str(value)


def parse_document(
    doc: Any,
    registry: Registry,
    *,
    expect_type: ResourceType | None = None,
    expect_mesh: str | None = None,
    expect_name: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> Resource:
    """Validate one Universal document. Every problem is reported with its field path.

    ``context`` is passed to the spec's validators, with the resource's ``name`` added; the REST API gives
    ``{"on_control_plane": True}`` for checks that only make sense on the control plane's machine (a provided
    CA's files)."""
    if not isinstance(doc, Mapping):
        raise ResourceValidationError([FieldError("", "a resource must be a YAML/JSON object")])
    check_plain(doc)  # plain JSON within the nesting limit, whoever built it
    errors: list[FieldError] = []
    kind = doc.get("type")
    rtype = registry.kind(kind) if isinstance(kind, str) else None
    if rtype is None or rtype.internal:
        if kind is None:
            reason = "is required"
        else:
            known = ", ".join(t.kind for t in registry.public())
            reason = f"unknown kind {kind!r}; known kinds: {known}"
        raise ResourceValidationError([FieldError("type", reason)])
    if expect_type is not None and rtype is not expect_type:
        errors.append(FieldError("type", f"must be {expect_type.kind} at this path, got {rtype.kind}"))
    name = _check_meta_name(errors, "name", doc.get("name"), mesh=rtype.kind == "Mesh")
    if expect_name is not None and name and name != expect_name:
        errors.append(FieldError("name", f"{name!r} does not match the name in the path ({expect_name!r})"))
    mesh = ""
    if rtype.scope is Scope.MESH:
        raw_mesh = doc.get("mesh")
        if raw_mesh is None and expect_mesh is not None:
            raw_mesh = expect_mesh
        if raw_mesh is None:
            errors.append(FieldError("mesh", "is required"))
        else:
            mesh = _check_meta_name(errors, "mesh", raw_mesh, mesh=True)
            if expect_mesh is not None and mesh and mesh != expect_mesh:
                errors.append(
                    FieldError("mesh", f"{mesh!r} does not match the mesh in the path ({expect_mesh!r})")
                )
    elif "mesh" in doc:
        errors.append(FieldError("mesh", f"must not be set: {rtype.kind} is a global resource"))
    labels = doc.get("labels") or {}
    problem = labels_problem(labels)
    if problem:
        errors.append(FieldError("labels", problem))
        labels = {}

    if rtype.spec_at_top_level:
        raw_spec: Any = {k: v for k, v in doc.items() if k not in META_FIELDS}
        prefix = ""
    else:
        extra = sorted(k for k in doc if k not in (*META_FIELDS, "spec"))
        errors.extend(FieldError(k, "unknown field") for k in extra)
        raw_spec = doc.get("spec")
        prefix = "spec"
        if raw_spec is None:
            errors.append(FieldError("spec", "is required"))
            raw_spec = {}
    spec: Model | None = None
    try:
        spec = rtype.spec_model.model_validate(
            raw_spec, context={**context, "name": name} if context else None
        )
    except ValidationError as exc:
        errors.extend(from_pydantic(exc, prefix).errors)
    if errors or spec is None:
        raise ResourceValidationError(errors)
    return Resource(rtype, mesh, name, spec, dict(labels))


def from_record(record: Record, registry: Registry) -> Resource:
    rtype = registry.kind(record.type)
    if rtype is None:
        raise KeyError(record.type)
    # STORED: fields refused at apply as "not supported yet" still load from records written before
    spec = rtype.spec_model.model_validate(record.spec, context={STORED: True})
    return Resource(rtype, record.mesh, record.name, spec, dict(record.labels))


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_document(record: Record, registry: Registry) -> dict[str, Any]:
    """The Universal form that ``GET`` returns and ``apply`` accepts back unchanged."""
    rtype = registry.kind(record.type)
    doc: dict[str, Any] = {"type": record.type}
    if rtype is not None and rtype.scope is Scope.MESH:
        doc["mesh"] = record.mesh
    doc["name"] = record.name
    doc["creationTime"] = _timestamp(record.creation_time)
    doc["modificationTime"] = _timestamp(record.modification_time)
    if record.labels:
        doc["labels"] = dict(record.labels)
    if rtype is not None and rtype.spec_at_top_level:
        doc.update(record.spec)
    else:
        doc["spec"] = record.spec
    return doc


def load_documents(text: str) -> list[Any]:
    """Parse a multi-document YAML (or JSON) text with the limits of :mod:`isthmus.resources.loading`
    (1 MiB, no aliases, 400 levels of nesting, plain JSON values); malformed input names the line."""
    return load_yaml_documents(text)
