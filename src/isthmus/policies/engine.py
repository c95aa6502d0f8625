"""The policy engine: which targetRef policies apply to a proxy, per inbound and per outbound, and their merge.

Kuma's model (``../shared/research/kuma.md`` section 3.3):

* the top-level ``targetRef`` selects proxies (Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane);
* ``to[]`` items configure outbound traffic to the destination their ``targetRef`` names (Mesh: every
  destination; MeshService: that service; MeshServiceSubset: that service's instances with the tags);
* ``from[]`` items configure inbound traffic from the clients their ``targetRef`` names;
* the matched items are ordered lowest priority first and their ``default`` blocks are merged in that order as
  JSON Merge Patches (RFC 7396): the later one wins field by field, nested objects merge, lists are replaced.

Kuma has two orders for ``to`` items (MADR 066), one per kind of outbound:

* outbounds addressed by ``kuma.io/service`` (Kuma 2.x's default, the only kind Isthmus has): the policies in
  :func:`isthmus.policies.matching.sort_policies` order (top-level kind, then name, the smaller name last), each
  policy's items in their ``to[]`` order; the item's own targetRef kind plays no part
  (:func:`service_tag_to_key`). ``from`` items merge the same way (policy order, then index);
* outbounds of real MeshService resources (not in Isthmus yet): top-level kind, then the item's targetRef kind,
  then the name (:func:`real_resource_to_key`).

The engine works on plain dicts (the ``default`` blocks as the user wrote them, camelCase), so every policy
kind gets the same merge; each plug-in then validates the merged result into its own typed model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isthmus.policies.matching import (
    policy_rank,
    selects_inbound,
    selects_proxy_type,
    sort_policies,
    tags_match,
)
from isthmus.resources.common import KIND_ORDER, SERVICE_TAG, TargetRef, TargetRefKind
from isthmus.resources.dataplane import DataplaneSpec, Inbound
from isthmus.resources.registry import Resource


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON Merge Patch: objects merge key by key, ``null`` removes a key, anything else replaces;
    except, as in Kuma, lists under a key starting with ``append`` (``appendModifications``) are concatenated."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key.startswith("append") and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]  # Kuma: fields named append* accumulate across policies
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_patch({}, value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Origin:
    """One policy item that contributed to a resolved configuration."""

    kind: str
    policy: str
    section: str  # "to[0]", "from[1]", "default"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "policy": self.policy, "section": self.section}


@dataclass(frozen=True)
class Resolved:
    """The merged ``default`` of every matching item, and where it came from (lowest priority first)."""

    conf: Mapping[str, Any]
    origins: tuple[Origin, ...]

    @property
    def empty(self) -> bool:
        return not self.origins


EMPTY = Resolved({}, ())


def dataplane_spec(dp: Resource) -> DataplaneSpec:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    return spec


def selects_proxy(ref: TargetRef, dp: Resource) -> bool:
    """A top-level targetRef selects a proxy when it selects any of its inbounds (Mesh and Dataplane always
    apply, even to a proxy without inbounds; Mesh and MeshSubset only to the ``proxyTypes`` they name)."""
    if ref.kind is TargetRefKind.MESH:
        return selects_proxy_type(ref, dp)
    if ref.kind is TargetRefKind.DATAPLANE and ref.section_name is None:
        if ref.name is not None and ref.name != dp.name:
            return False
        return ref.labels is None or tags_match(ref.labels, dp.labels)
    net = dataplane_spec(dp).networking
    if net.gateway is not None and _selects_gateway_tags(ref, dp, net.gateway.tags):
        return True
    return any(selects_inbound(ref, dp, inbound) for inbound in net.inbound)


def _selects_gateway_tags(ref: TargetRef, dp: Resource, tags: Mapping[str, str]) -> bool:
    """Kuma selects a gateway proxy by the tags of its ``networking.gateway`` as it selects a sidecar by its
    inbounds' tags."""
    if ref.kind is TargetRefKind.MESH_SUBSET:
        return selects_proxy_type(ref, dp) and tags_match(ref.tags, tags)
    if ref.kind is TargetRefKind.MESH_SERVICE:
        return tags.get(SERVICE_TAG) == ref.name
    if ref.kind is TargetRefKind.MESH_SERVICE_SUBSET:
        return tags.get(SERVICE_TAG) == ref.name and tags_match(ref.tags, tags)
    return False


def _top_ref(policy: Resource) -> TargetRef:
    ref = getattr(policy.spec, "target_ref", None)
    return ref if isinstance(ref, TargetRef) else TargetRef(kind=TargetRefKind.MESH)


def _items(policy: Resource, section: str) -> Sequence[Any]:
    attr = "from_" if section == "from" else section
    return list(getattr(policy.spec, attr, None) or [])


def destination_matches(ref: TargetRef, service: str, tags: Mapping[str, str] | None = None) -> bool:
    """Does a ``to[].targetRef`` name this destination? ``tags`` narrows to a subset of its instances."""
    if ref.kind is TargetRefKind.MESH:
        return True
    if ref.kind is TargetRefKind.MESH_SERVICE:
        return ref.name == service
    if ref.kind is TargetRefKind.MESH_SERVICE_SUBSET:
        return ref.name == service and tags is not None and tags_match(ref.tags, tags)
    return False


def client_matches(ref: TargetRef, client_tags: Mapping[str, str] | None) -> bool:
    """Does a ``from[].targetRef`` include a client with these tags? ``None``: any client (Mesh-wide only)."""
    if ref.kind is TargetRefKind.MESH:
        return True
    if client_tags is None:
        return False
    if ref.kind is TargetRefKind.MESH_SUBSET:
        return tags_match(ref.tags, client_tags)
    if ref.kind is TargetRefKind.MESH_SERVICE:
        return client_tags.get(SERVICE_TAG) == ref.name
    if ref.kind is TargetRefKind.MESH_SERVICE_SUBSET:
        return client_tags.get(SERVICE_TAG) == ref.name and tags_match(ref.tags, client_tags)
    return False


def _default_dict(item: Any) -> dict[str, Any]:
    default = getattr(item, "default", None)
    if default is None:
        return {}
    dumped = default.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert isinstance(dumped, dict)
    return dumped


Entry = tuple[tuple[Any, ...], Resource, str, Any]  # (sort key, policy, section, item)


def service_tag_to_key(
    policy: Resource, position: int, index: int, item_kind: TargetRefKind
) -> tuple[Any, ...]:
    """Merge order of a ``to`` item for an outbound addressed by ``kuma.io/service`` (Kuma 2.x's legacy to-rules):
    the matched policies sorted by top-level targetRef (kind, then name: ``position`` is the policy's place in
    descending name order), their ``to[]`` lists concatenated in index order. The item's own kind is ignored:
    MADR 066's example (``aaa`` with ``to: Mesh``, ``bbb`` with ``to: MeshService backend``, both top-level Mesh)
    gives ``merge(bbb, aaa)`` for backend, because ``aaa`` sorts last and wins."""
    del item_kind  # not part of the legacy order
    return (policy_rank(policy), position, index)


def real_resource_to_key(
    policy: Resource, position: int, index: int, item_kind: TargetRefKind
) -> tuple[Any, ...]:
    """Merge order of a ``to`` item for an outbound of a real resource (MeshService, MeshExternalService; Kuma's
    ``ToRules.ResourceRules``, MADR 066): top-level kind, then the item's targetRef kind, then the name, so that
    ``to: MeshService backend`` wins over ``to: Mesh`` whatever the policies are called. Isthmus has no
    MeshService outbounds yet: this order is used only for the ``toResourceRules`` of ``_rules``."""
    return (policy_rank(policy), KIND_ORDER[item_kind], position, index)


ToOrder = Callable[[Resource, int, int, TargetRefKind], tuple[Any, ...]]


def _merge(entries: list[Entry]) -> Resolved:
    """Merge the entries sorted by their keys (lowest priority first; see the module docstring)."""
    entries.sort(key=lambda e: e[0])
    conf: dict[str, Any] = {}
    origins = []
    for _, policy, section, item in entries:
        conf = merge_patch(conf, _default_dict(item))
        origins.append(Origin(policy.type.kind, policy.name, section))
    return Resolved(conf, tuple(origins)) if origins else EMPTY


def resolve_to(
    policies: Iterable[Resource],
    dp: Resource,
    service: str,
    tags: Mapping[str, str] | None = None,
    *,
    order: ToOrder | None = None,
) -> Resolved:
    """The merged ``to`` configuration of one kind for the outbound of ``dp`` to ``service``, merged in
    ``order`` (default: :func:`service_tag_to_key`, Kuma's order for ``kuma.io/service`` outbounds)."""
    how = order or service_tag_to_key
    selected = [p for p in policies if selects_proxy(_top_ref(p), dp)]
    key = ("to", how.__name__, service, tuple(sorted((tags or {}).items())), *(p.digest for p in selected))
    return _memo(key, lambda: _resolve_to(selected, service, tags, how))


def _resolve_to(
    selected: list[Resource],
    service: str,
    tags: Mapping[str, str] | None,
    order: ToOrder = service_tag_to_key,
) -> Resolved:
    entries: list[Entry] = []
    for by_name, policy in _by_name(selected):
        for i, item in enumerate(_items(policy, "to")):
            if destination_matches(item.target_ref, service, tags):
                key = order(policy, by_name, i, item.target_ref.kind)
                entries.append((key, policy, f"to[{i}]", item))
    return _merge(entries)


def resolve_to_mesh_resource(policies: Iterable[Resource], dp: Resource) -> Resolved:
    """The merged ``to`` items of kind Mesh in the real-resource order (:func:`real_resource_to_key`): Kuma's
    ``toResourceRules`` entry for the Mesh, the fallback of every real destination no item names."""
    selected = [p for p in policies if selects_proxy(_top_ref(p), dp)]
    entries: list[Entry] = []
    for by_name, policy in _by_name(selected):
        for i, item in enumerate(_items(policy, "to")):
            if item.target_ref.kind is TargetRefKind.MESH:
                key = real_resource_to_key(policy, by_name, i, item.target_ref.kind)
                entries.append((key, policy, f"to[{i}]", item))
    return _merge(entries)


def resolve_from(
    policies: Iterable[Resource],
    dp: Resource,
    inbound: Inbound,
    client_tags: Mapping[str, str] | None = None,
) -> Resolved:
    """The merged ``from`` configuration of one kind for an inbound, for a client (``None``: Mesh-wide items)."""
    selected = [p for p in policies if selects_inbound(_top_ref(p), dp, inbound)]
    client = None if client_tags is None else tuple(sorted(client_tags.items()))
    key = ("from", client, *(p.digest for p in selected))
    return _memo(key, lambda: _resolve_from(selected, client_tags))


def _resolve_from(selected: list[Resource], client_tags: Mapping[str, str] | None) -> Resolved:
    entries: list[Entry] = []
    for by_name, policy in _by_name(selected):
        for i, item in enumerate(_items(policy, "from")):
            if client_matches(item.target_ref, client_tags):  # Kuma: policy order, then index (kind ignored)
                entries.append(((policy_rank(policy), by_name, 0, i), policy, f"from[{i}]", item))
        for i, item in enumerate(_items(policy, "rules")):  # inbound rules: every client
            entries.append(((policy_rank(policy), by_name, 1, i), policy, f"rules[{i}]", item))
    return _merge(entries)


def route_policy_name(route_name: str) -> str:
    """The MeshHTTPRoute a generated route came from (route names are ``<policy>/to[i]/rules[j]``)."""
    return route_name.split("/", 1)[0]


def resolve_route(policies: Iterable[Resource], route_name: str) -> Resolved:
    """The merged top-level ``default`` of the policies whose targetRef is ``{kind: MeshHTTPRoute, name}`` for
    the MeshHTTPRoute a route came from (the smaller policy name wins)."""
    owner = route_policy_name(route_name)
    matching = [
        p
        for p in policies
        if _top_ref(p).kind is TargetRefKind.MESH_HTTP_ROUTE and _top_ref(p).name == owner and _has_default(p)
    ]
    return _merge([((position,), p, "default", p.spec) for position, p in _by_name(matching)])


def resolve_proxy(policies: Iterable[Resource], dp: Resource) -> Resolved:
    """The merged top-level ``default`` of single-item policies (those without to/from) for a proxy."""
    ordered = sort_policies(p for p in policies if selects_proxy(_top_ref(p), dp) and _has_default(p))
    return _merge([((rank,), p, "default", p.spec) for rank, p in enumerate(ordered)])


_MEMO: dict[tuple[Any, ...], Resolved] = {}
_MEMO_LIMIT = 50_000


def _memo(key: tuple[Any, ...], compute: Callable[[], Resolved]) -> Resolved:
    """Resolution depends only on the selected policies' content and the destination or client, so proxies
    that share them (most of a mesh) share one result. Keys hold content digests, never object identities."""
    found = _MEMO.get(key)
    if found is None:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        found = _MEMO[key] = compute()
    return found


def _by_name(policies: Iterable[Resource]) -> list[tuple[int, Resource]]:
    """Policies with their position in descending name order (a later position means higher priority)."""
    return list(enumerate(sorted(policies, key=lambda p: p.name, reverse=True)))


def _has_default(policy: Resource) -> bool:
    return getattr(policy.spec, "default", None) is not None
