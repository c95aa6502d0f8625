"""Kuma's rule view of a proxy (``GET .../dataplanes/{name}/_rules``, ``kumactl inspect dataplane --type=rules``).

Kuma 2.x hands its policy plug-ins, per policy type, sets of rules; its inspect API shows them as they are:

* ``toRules``: the destinations are split into subsets (tag predicates, possibly negated) built from the ``to``
  items' targetRefs; each subset gets the merge of the items that include it, in the order for ``kuma.io/service``
  outbounds (policy order, then ``to[]`` index). A policy attached to a MeshHTTPRoute contributes one item per
  rule of the route, on the subset ``__rule-matches-hash__=<hash of the rule's matches>`` (and the route's
  destination service): route-level confs show there, and ``httpMatches`` maps each hash to its matches;
* ``fromRules``: per inbound, the clients split the same way by the ``from`` items (with negations);
* ``inboundRules``: per inbound, every ``rules`` item (and the ``from`` items of the types Kuma reads as rules),
  each with its own conf, in policy order: merged in that order they give the inbound's configuration;
* ``toResourceRules``: per real resource in the real-resource order (MADR 066). Isthmus has no MeshService
  resources, so there is at most the entry for the Mesh (the merged ``to`` items of kind Mesh);
* ``proxyRule``: the merged top-level ``default`` of single-item policies (MeshProxyPatch).

The subset construction follows Kuma's description (MADR 005/007): without negations when every item names at
most one tag key, else every combination of the items' tags, each one present or negated, grouped by connected
sets of intersecting items (Kuma groups by cliques; the subsets differ only for items that overlap pairwise
without all overlapping). This module only describes; the configuration Envoy gets is computed by the plug-ins
through :mod:`isthmus.policies.engine`, from the same order.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isthmus.policies.engine import (
    dataplane_spec,
    merge_patch,
    resolve_proxy,
    resolve_to_mesh_resource,
    selects_proxy,
)
from isthmus.policies.matching import selects_inbound, sort_policies, target_ref_of
from isthmus.resources.common import SERVICE_TAG, TargetRef, TargetRefKind
from isthmus.resources.dataplane import Inbound
from isthmus.resources.registry import Resource

RULE_MATCHES_HASH_TAG = "__rule-matches-hash__"
ROUTE_KINDS = ("MeshHTTPRoute", "MeshTCPRoute")
# Kuma's policy types whose ``from`` items are also shown (and applied) as inbound rules (``IsFromAsRules``)
FROM_AS_RULES = frozenset({"MeshAccessLog", "MeshCircuitBreaker", "MeshRateLimit", "MeshTimeout", "MeshTLS"})

Tag = tuple[str, str, bool]  # key, value, negated
Subset = tuple[Tag, ...]


@dataclass(frozen=True)
class Item:
    """A ``to``/``from`` item seen as a subset of destinations or clients with its conf."""

    subset: Subset
    conf: Mapping[str, Any]
    policy: Resource


def meta(resource: Resource, kind: str | None = None) -> dict[str, Any]:
    return {
        "type": kind or resource.type.kind,
        "mesh": resource.mesh,
        "name": resource.name,
        "labels": dict(resource.labels),
    }


def matches_hash(matches: Any) -> str:
    """A stable name for a route rule's matches (Kuma keys route-level rules by a hash of them)."""
    canonical = json.dumps(matches, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(hashlib.sha256(canonical.encode()).digest()).decode()


# -- subsets ------------------------------------------------------------------------------------------------------
def ref_subset(ref: TargetRef) -> Subset:
    if ref.kind is TargetRefKind.MESH:
        return ()
    tags: dict[str, str] = {}
    if ref.kind in (TargetRefKind.MESH_SERVICE, TargetRefKind.MESH_SERVICE_SUBSET) and ref.name:
        tags[SERVICE_TAG] = ref.name
    if ref.kind in (TargetRefKind.MESH_SUBSET, TargetRefKind.MESH_SERVICE_SUBSET):
        tags.update(ref.tags or {})
    return tuple((k, v, False) for k, v in sorted(tags.items()))


def _tag_within(tag: Tag, other: Tag) -> bool:
    """Is every element with ``other`` also one with ``tag`` (same key)?"""
    _, value, negated = tag
    if negated == other[2]:
        return value == other[1]
    return negated and value != other[1]  # "not a" includes "b"; "a" never includes "not b"


def is_subset(item: Subset, subset: Subset) -> bool:
    """Does the item's subset include every element of ``subset``?"""
    for tag in item:
        same_key = [t for t in subset if t[0] == tag[0]]
        if not same_key or not all(_tag_within(tag, t) for t in same_key):
            return False
    return True


def intersect(a: Subset, b: Subset) -> bool:
    positive = {(k, v) for k, v, n in b if not n}
    keys = {k for k, _ in positive}
    return all((k, v) in positive for k, v, n in a if not n and k in keys)


def _combinations(tags: Sequence[tuple[str, str]]) -> list[Subset]:
    """Every subset where each key takes one of its values or none of them (all negated), in Kuma's order."""
    keys: dict[str, list[str]] = {}
    for key, value in tags:
        values = keys.setdefault(key, [])
        if value not in values:
            values.append(value)
    dims = list(keys.items())
    idx = [0] * len(dims)

    def current() -> Subset:
        out: list[Tag] = []
        for (key, values), choice in zip(dims, idx, strict=True):
            if choice == len(values):
                out.extend((key, v, True) for v in values)
            else:
                out.append((key, values[len(values) - choice - 1], False))
        return tuple(out)

    result = []
    while True:
        for i, (_, values) in enumerate(dims):
            idx[i] += 1
            if idx[i] <= len(values):
                result.append(current())
                break
            idx[i] = 0
        else:
            result.append(current())
            return result


def _components(subsets: Sequence[Subset]) -> list[list[int]]:
    seen: set[int] = set()
    groups = []
    for start in range(len(subsets)):
        if start in seen:
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            node = todo.pop()
            group.append(node)
            for other in range(len(subsets)):
                if other not in seen and intersect(subsets[node], subsets[other]):
                    seen.add(other)
                    todo.append(other)
        groups.append(sorted(group))
    return sorted(groups, key=lambda g: ":".join(map(str, g)), reverse=True)


def build_rules(items: Sequence[Item], *, negations: bool, kind: str) -> list[dict[str, Any]]:
    """Kuma's ``Rules`` for a list of items in merge order: ``[{matchers, conf, origin}]``, most specific first."""
    if not items:
        return []
    keys = {k for item in items for k, _, _ in item.subset}
    rules: list[tuple[Subset, dict[str, Any]]] = []
    if not negations and len(keys) <= 1:
        unique: dict[Subset, None] = {}
        for item in items:
            unique.setdefault(tuple(sorted(item.subset)), None)
        rules = [(ss, rule) for ss in unique for rule in _rule(ss, items, kind)]
        rules.sort(key=lambda r: -len(r[0]))
    else:
        for group in _components([item.subset for item in items]):
            tags = sorted({(k, v) for i in group for k, v, _ in items[i].subset})
            for ss in _combinations(tags):
                rules.extend((ss, rule) for rule in _rule(ss, items, kind))
        rules.sort(key=lambda r: -sum(1 for t in r[0] if not t[2]))
    return [rule for _, rule in rules]


def _rule(subset: Subset, items: Sequence[Item], kind: str) -> list[dict[str, Any]]:
    relevant = [item for item in items if is_subset(item.subset, subset)]
    if not relevant:
        return []
    origin: dict[tuple[str, str], dict[str, Any]] = {}
    for item in relevant:
        origin.setdefault((item.policy.type.kind, item.policy.name), meta(item.policy))
    matchers = [{"key": k, "value": v, "not": n} for k, v, n in sorted(subset)]
    conf = merge_confs([item.conf for item in relevant], kind)
    return [{"matchers": matchers, "conf": conf, "origin": list(origin.values())}]


def merge_confs(confs: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    """JSON Merge Patches in order; a route's ``rules`` merge by their matches (a later rule with the same matches
    replaces the earlier one), as Kuma merges route rules."""
    out: dict[str, Any] = {}
    for conf in confs:
        if kind in ROUTE_KINDS and "rules" in conf and "rules" in out:
            by_matches = {json.dumps(r.get("matches"), sort_keys=True): r for r in out["rules"]}
            for rule in conf["rules"]:
                by_matches[json.dumps(rule.get("matches"), sort_keys=True)] = rule
            out = {
                **merge_patch(out, {k: v for k, v in conf.items() if k != "rules"}),
                "rules": list(by_matches.values()),
            }
        else:
            out = merge_patch(out, conf)
    return out


# -- items of one policy type ---------------------------------------------------------------------------------------
def _item_conf(item: Any) -> dict[str, Any]:
    """An item's ``default``; a route item (no default) is its ``rules``, as Kuma shows a route's conf."""
    dumped = item.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert isinstance(dumped, dict)
    if "default" in dumped:
        conf = dumped["default"]
        assert isinstance(conf, dict)
        return conf
    return {k: v for k, v in dumped.items() if k != "targetRef"}


def _section(policy: Resource, name: str) -> list[Any]:
    return list(getattr(policy.spec, "from_" if name == "from" else name, None) or [])


def _route_selects(route: Resource, dp: Resource) -> bool:
    return selects_proxy(target_ref_of(route), dp)


def to_items(
    policies: Sequence[Resource], dp: Resource, routes: Mapping[str, Resource], http_matches: dict[str, Any]
) -> list[Item]:
    """The ``to`` items of the policies that select ``dp``, in Kuma's order for ``kuma.io/service`` outbounds; a
    policy attached to a MeshHTTPRoute becomes one item per rule of the route."""
    selected = []
    for policy in policies:
        top = target_ref_of(policy)
        if top.kind is TargetRefKind.MESH_HTTP_ROUTE:
            route = routes.get(top.name or "")
            if route is not None and _route_selects(route, dp):
                selected.append(policy)
        elif selects_proxy(top, dp):
            selected.append(policy)
    items: list[Item] = []
    for policy in sort_policies(selected):
        top = target_ref_of(policy)
        if top.kind is not TargetRefKind.MESH_HTTP_ROUTE:
            items.extend(
                Item(ref_subset(i.target_ref), _item_conf(i), policy) for i in _section(policy, "to")
            )
            continue
        route = routes[top.name or ""]
        for route_to in _section(route, "to"):
            base = ref_subset(route_to.target_ref)
            for rule in route_to.rules:
                matches = [m.model_dump(by_alias=True, exclude_none=True, mode="json") for m in rule.matches]
                digest = matches_hash(matches)
                http_matches[digest] = matches
                subset = tuple(sorted((*base, (RULE_MATCHES_HASH_TAG, digest, False))))
                items.extend(Item(subset, _item_conf(i), policy) for i in _section(policy, "to"))
    return items


def from_items(policies: Sequence[Resource], dp: Resource, inbound: Inbound) -> list[Item]:
    ordered = sort_policies(p for p in policies if selects_inbound(target_ref_of(p), dp, inbound))
    return [Item(ref_subset(i.target_ref), _item_conf(i), p) for p in ordered for i in _section(p, "from")]


def inbound_rules(
    kind: str, policies: Sequence[Resource], dp: Resource, inbound: Inbound
) -> list[dict[str, Any]]:
    out = []
    for policy in sort_policies(p for p in policies if selects_inbound(target_ref_of(p), dp, inbound)):
        entries = _section(policy, "rules") or (_section(policy, "from") if kind in FROM_AS_RULES else [])
        for index, entry in enumerate(entries):
            out.append(
                {
                    "conf": [_item_conf(entry)],
                    "match": None,
                    "origin": [{"resourceMeta": meta(policy), "ruleIndex": index}],
                }
            )
    return out


def _inbound_doc(inbound: Inbound) -> dict[str, Any]:
    doc: dict[str, Any] = {"tags": dict(inbound.tags), "port": inbound.port}
    if inbound.name:
        doc["name"] = inbound.name
    return doc


def inspect_rule(
    kind: str,
    policies: Sequence[Resource],
    dp: Resource,
    routes: Mapping[str, Resource],
    http_matches: dict[str, Any],
) -> dict[str, Any] | None:
    """One entry of ``rules[]``: what the policies of one type give this proxy; None when nothing applies."""
    inbounds = dataplane_spec(dp).networking.inbound
    to_rules = build_rules(to_items(policies, dp, routes, http_matches), negations=False, kind=kind)
    from_rules = []
    inbound_entries = []
    for inbound in sorted(inbounds, key=lambda i: i.port):
        rules = build_rules(from_items(policies, dp, inbound), negations=True, kind=kind)
        if rules:
            from_rules.append({"inbound": _inbound_doc(inbound), "rules": rules})
        entries = inbound_rules(kind, policies, dp, inbound)
        if entries:
            inbound_entries.append({"inbound": _inbound_doc(inbound), "rules": entries})
    to_resource_rules = []
    mesh_items = resolve_to_mesh_resource(
        [p for p in policies if target_ref_of(p).kind is not TargetRefKind.MESH_HTTP_ROUTE], dp
    )
    if not mesh_items.empty:
        by_name = {p.name: p for p in policies}
        to_resource_rules.append(
            {
                "resourceMeta": {"type": "Mesh", "mesh": "", "name": dp.mesh, "labels": {}},
                "resourceSectionName": "",
                "conf": [dict(mesh_items.conf)],
                "origin": [
                    {"resourceMeta": meta(by_name[o.policy]), "ruleIndex": int(o.section[3:-1])}
                    for o in mesh_items.origins
                ],
            }
        )
    proxy = resolve_proxy(policies, dp)
    proxy_rule = None
    if not proxy.empty:
        by_name = {p.name: p for p in policies}
        proxy_rule = {"conf": dict(proxy.conf), "origin": [meta(by_name[o.policy]) for o in proxy.origins]}
    if not (to_rules or from_rules or inbound_entries or to_resource_rules or proxy_rule):
        return None
    rule: dict[str, Any] = {
        "type": kind,
        "toRules": to_rules,
        "toResourceRules": to_resource_rules,
        "fromRules": from_rules,
        "inboundRules": inbound_entries,
        "warnings": [],
    }
    if proxy_rule is not None:
        rule["proxyRule"] = proxy_rule
    return rule


def inspect_rules(dp: Resource, policies_by_kind: Mapping[str, Sequence[Resource]]) -> dict[str, Any]:
    """Kuma's ``InspectRules`` document for a proxy: ``{resource, rules[], httpMatches[]}``; ``policies_by_kind``
    in plug-in order."""
    routes = {r.name: r for r in policies_by_kind.get("MeshHTTPRoute", ())}
    http_matches: dict[str, Any] = {}
    rules = []
    for kind, policies in policies_by_kind.items():
        rule = inspect_rule(kind, policies, dp, routes, http_matches)
        if rule is not None:
            rules.append(rule)
    return {
        "resource": meta(dp),
        "rules": rules,
        "httpMatches": [{"hash": h, "match": m} for h, m in sorted(http_matches.items())],
    }
