"""Which policies select a proxy's inbound, and in which order they apply (Kuma's precedence).

Policies are returned lowest priority first, so that merging in order lets the most specific one win:
1. the top-level ``targetRef.kind`` by specificity (``KIND_ORDER``: Mesh < Dataplane < MeshSubset < MeshService <
   MeshServiceSubset);
2. within ``Dataplane``: selected by labels < selected by name, and without ``sectionName`` < with it;
3. ties are broken by name: the lexicographically smaller name comes last and wins.

A top-level targetRef of kind Mesh or MeshSubset with ``proxyTypes`` selects only proxies of those types, as in
Kuma: a Dataplane with a ``networking.gateway`` section is a ``Gateway``, any other a ``Sidecar``
(:func:`proxy_type`). Without ``proxyTypes`` both types are selected. Other kinds refuse the field at apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from isthmus.resources.common import KIND_ORDER, SERVICE_TAG, ProxyType, TargetRef, TargetRefKind
from isthmus.resources.dataplane import DataplaneSpec, Inbound
from isthmus.resources.registry import Resource


def tags_match(selector: Mapping[str, str] | None, tags: Mapping[str, str]) -> bool:
    """A tag selector matches when every key is present with the same value (``*`` matches any value)."""
    if not selector:
        return True
    return all(k in tags and (v == "*" or tags[k] == v) for k, v in selector.items())


def inbound_section_names(inbound: Inbound) -> set[str]:
    names = {str(inbound.port)}
    if inbound.name:
        names.add(inbound.name)
    return names


def proxy_type(dataplane: Resource) -> ProxyType:
    """A Dataplane with a ``networking.gateway`` section (delegated or builtin) is a Gateway proxy."""
    spec = dataplane.spec
    if isinstance(spec, DataplaneSpec) and spec.networking.gateway is not None:
        return ProxyType.GATEWAY
    return ProxyType.SIDECAR


def selects_proxy_type(ref: TargetRef, dataplane: Resource) -> bool:
    """``proxyTypes`` of a Mesh or MeshSubset targetRef: unset selects every proxy, else only those types."""
    if ref.proxy_types is None or ref.kind not in (TargetRefKind.MESH, TargetRefKind.MESH_SUBSET):
        return True
    return proxy_type(dataplane) in ref.proxy_types


def selects_inbound(ref: TargetRef, dataplane: Resource, inbound: Inbound) -> bool:
    """Does a top-level targetRef select this inbound of this data plane?"""
    kind = ref.kind
    if kind is TargetRefKind.MESH:
        return selects_proxy_type(ref, dataplane)
    if kind is TargetRefKind.MESH_SUBSET:
        return selects_proxy_type(ref, dataplane) and tags_match(ref.tags, inbound.tags)
    if kind is TargetRefKind.MESH_SERVICE:
        return inbound.tags.get(SERVICE_TAG) == ref.name
    if kind is TargetRefKind.MESH_SERVICE_SUBSET:
        return inbound.tags.get(SERVICE_TAG) == ref.name and tags_match(ref.tags, inbound.tags)
    if kind is TargetRefKind.DATAPLANE:
        if ref.name is not None and ref.name != dataplane.name:
            return False
        if ref.labels is not None and not tags_match(ref.labels, dataplane.labels):
            return False
        return not (ref.section_name is not None and ref.section_name not in inbound_section_names(inbound))
    return False


def target_ref_of(policy: Resource) -> TargetRef:
    """The top-level ``targetRef`` of a policy (every policy spec has one; Kuma's default is ``Mesh``)."""
    ref = getattr(policy.spec, "target_ref", None)
    if not isinstance(ref, TargetRef):
        raise TypeError(f"{policy.type.kind} {policy.name!r} has no top-level targetRef")
    return ref


def policy_rank(policy: Resource) -> tuple[int, int]:
    ref = target_ref_of(policy)
    sub = 0
    if ref.kind is TargetRefKind.DATAPLANE:
        sub = (2 if ref.name else 0) + (1 if ref.section_name else 0)
    return KIND_ORDER[ref.kind], sub


def sort_policies(policies: Iterable[Resource]) -> list[Resource]:
    """Lowest priority first; see the module docstring."""
    by_name_desc = sorted(policies, key=lambda p: p.name, reverse=True)
    return sorted(by_name_desc, key=policy_rank)


def matched_for_inbound(
    policies: Iterable[Resource], dataplane: Resource, inbound: Inbound
) -> list[Resource]:
    return sort_policies(p for p in policies if selects_inbound(target_ref_of(p), dataplane, inbound))
