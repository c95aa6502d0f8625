"""Schema pieces shared by targetRef policies: ``to``/``from`` items and the targetRef kind checks."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import Field

from isthmus.resources.common import Model, TargetRef, TargetRefKind

ConfT = TypeVar("ConfT", bound=Model)

TOP_LEVEL_KINDS = (
    TargetRefKind.MESH,
    TargetRefKind.MESH_SUBSET,
    TargetRefKind.MESH_SERVICE,
    TargetRefKind.MESH_SERVICE_SUBSET,
    TargetRefKind.DATAPLANE,
)
TO_KINDS = (TargetRefKind.MESH, TargetRefKind.MESH_SERVICE)
UINT32_MAX = 4_294_967_295  # counts, thresholds and token numbers end up in Envoy's uint32 fields


# An RFC 7230 token: what an HTTP header name can be (so never a ':'-prefixed pseudo-header)
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_header_name(name: str) -> str:
    """A header that a policy adds, sets or removes: a valid name, not a pseudo-header and not ``host``
    (Envoy refuses to modify those)."""
    if not HEADER_NAME_RE.match(name):
        raise ValueError(f"{name[:60]!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
    if name.lower() == "host":
        raise ValueError("the host header cannot be modified")
    return name


def check_header_value(value: str) -> str:
    if any(c in value for c in "\0\r\n"):
        raise ValueError("a header value must not contain NUL, CR or LF")
    return value


def conf_problem(spec: Any, check: Callable[[Any], str | None]) -> str | None:
    """The first ``path: reason`` that ``check`` finds in the ``default`` of an item of the policy's ``to``,
    ``from`` or ``rules`` (or in its top-level ``default``), with the item's path in front.

    Checks across fields of a conf belong here, on the spec, and not in the conf models: confs from several
    policies are merged field by field and the result is parsed again, so a conf-level rule such as "min below
    max" could refuse a merge of policies that are each valid. Translation copes with crossed merged values."""
    for attr, alias in (("to", "to"), ("from_", "from"), ("rules", "rules")):
        for i, item in enumerate(getattr(spec, attr, None) or []):
            problem = check(item.default)
            if problem:
                return f"{alias}[{i}].default.{problem}"
    default = getattr(spec, "default", None)
    if default is not None:
        problem = check(default)
        if problem:
            return f"default.{problem}"
    return None


def check_decimal(value: float | str | None, low: float, high: float) -> float | str | None:
    """A Kuma decimal given as a number or a string (``0.5``, ``"1.9"``): ValueError unless it is a finite
    number between ``low`` and ``high``."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not low <= number <= high:  # NaN fails too
        raise ValueError(f"must be a number between {low:g} and {high:g}")
    return value


FROM_KINDS = (TargetRefKind.MESH,)


def mesh_ref() -> TargetRef:
    return TargetRef(kind=TargetRefKind.MESH)


class To(Model, Generic[ConfT]):
    target_ref: TargetRef = Field(alias="targetRef")
    default: ConfT


class From(Model, Generic[ConfT]):
    target_ref: TargetRef = Field(alias="targetRef")
    default: ConfT


class Rule(Model, Generic[ConfT]):
    """An inbound rule (Kuma 2.12+, the only inbound form in 3.0): applies to every client of the selected
    inbounds. Equivalent to a ``from`` item with ``targetRef.kind: Mesh``."""

    default: ConfT


PROXY_TYPE_KINDS = (TargetRefKind.MESH, TargetRefKind.MESH_SUBSET)


def proxy_types_problem(ref: TargetRef, path: str, *, top_level: bool) -> str | None:
    """``proxyTypes`` as Kuma's validator allows it: only with kind Mesh or MeshSubset, and not empty (the values,
    Sidecar and Gateway, are checked by the model). It selects proxies, so Isthmus refuses it in ``to``/``from``
    items, where Kuma accepts it and it has no effect."""
    if ref.proxy_types is None:
        return None
    where = f"{path}.proxyTypes"
    if ref.kind not in PROXY_TYPE_KINDS:
        return f"{where}: must not be set with kind {ref.kind.value} (only with Mesh or MeshSubset)"
    if not top_level:
        return f"{where}: not supported in a to/from item (it has no effect there); set it on the top-level targetRef"
    if not ref.proxy_types:
        return f"{where}: must be left out or have at least one item (Sidecar, Gateway)"
    return None


def target_ref_problems(
    top: TargetRef,
    to: Sequence[Any] | None,
    from_: Sequence[Any] | None,
    *,
    top_kinds: tuple[TargetRefKind, ...] = TOP_LEVEL_KINDS,
    to_kinds: tuple[TargetRefKind, ...] = TO_KINDS,
    from_kinds: tuple[TargetRefKind, ...] = FROM_KINDS,
    require_section: bool = True,
    rules: Sequence[Any] | None = None,
) -> str | None:
    """The first problem with a policy's targetRefs as ``field.path: reason``, or None."""
    for field, reason in top.structural_errors(top_kinds):
        return f"targetRef.{field}: {reason}"
    problem = proxy_types_problem(top, "targetRef", top_level=True)
    if problem:
        return problem
    for i, to_item in enumerate(to or []):
        for field, reason in to_item.target_ref.structural_errors(to_kinds):
            return f"to[{i}].targetRef.{field}: {reason}"
        problem = proxy_types_problem(to_item.target_ref, f"to[{i}].targetRef", top_level=False)
        if problem:
            return problem
    for i, from_item in enumerate(from_ or []):
        for field, reason in from_item.target_ref.structural_errors(from_kinds):
            return f"from[{i}].targetRef.{field}: {reason}"
        problem = proxy_types_problem(from_item.target_ref, f"from[{i}].targetRef", top_level=False)
        if problem:
            return problem
    if from_ and rules:
        return "rules: cannot be used together with from"
    if require_section and not to and not from_ and not rules:
        return "to: at least one of to, from and rules must have an item"
    return None


def route_target_problems(
    top: TargetRef,
    to: Sequence[Any] | None,
    from_: Sequence[Any] | None,
    rules: Sequence[Any] | None,
) -> str | None:
    """A policy attached to a MeshHTTPRoute, in Kuma's form: top-level ``targetRef: {kind: MeshHTTPRoute, name}``
    and ``to`` items of kind ``Mesh`` (the destinations of that route's requests); no ``from`` or ``rules``."""
    if top.labels is not None:
        return "targetRef.labels: selecting MeshHTTPRoutes by labels is not supported yet (use name)"
    if not top.name:
        return "targetRef.name: must be set with kind MeshHTTPRoute"
    for field, alias in (("tags", "tags"), ("section_name", "sectionName"), ("proxy_types", "proxyTypes")):
        if getattr(top, field) is not None:
            return f"targetRef.{alias}: must not be set with kind MeshHTTPRoute"
    for alias, items in (("from", from_), ("rules", rules)):
        if items:
            return f"{alias}: must not be set with targetRef kind MeshHTTPRoute (a route's requests are outbound: use to)"
    if not to:
        return "to: must have at least one item"
    for i, item in enumerate(to):
        for field, reason in item.target_ref.structural_errors((TargetRefKind.MESH,)):
            return f"to[{i}].targetRef.{field}: {reason} (with top-level targetRef kind MeshHTTPRoute)"
    return None


def refuse_unknown_forms(data: Any) -> Any:
    """Before validating a ``to``-section policy's spec: a top-level ``default`` (not Kuma's form for these
    policies) is refused with a pointer to Kuma's form, and a ``to`` item naming a kind Kuma has and Isthmus does
    not yet is refused as such rather than as an unknown kind."""
    if isinstance(data, dict):
        if data.get("default") is not None:
            raise ValueError(LEGACY_ROUTE_DEFAULT)
        for i, item in enumerate(data.get("to") or []):
            ref = item.get("targetRef") if isinstance(item, dict) else None
            kind = ref.get("kind") if isinstance(ref, dict) else None
            if kind in NOT_SUPPORTED_YET_KINDS:
                raise ValueError(f"to[{i}].targetRef.kind: {kind} is not supported yet")
    return data


NOT_SUPPORTED_YET_KINDS = ("MeshExternalService", "MeshMultiZoneService")
LEGACY_ROUTE_DEFAULT = (
    "default: not a field of this policy; to configure the requests of a MeshHTTPRoute use Kuma's form, "
    "targetRef: {kind: MeshHTTPRoute, name: ...} with to: [{targetRef: {kind: Mesh}, default: {...}}]"
)
