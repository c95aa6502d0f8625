"""MeshHTTPRoute: L7 routing of an HTTP outbound (matches, weighted backends, header modifiers, rewrites,
redirects, mirrors).

Resolution follows Kuma:

1. the ``to`` items of every MeshHTTPRoute that selects the proxy and names the outbound's service are taken
   lowest priority first (the engine's order: top-level targetRef kind, the ``to`` kind, then the name, the
   lexicographically smaller name winning);
2. an implicit lowest-priority rule ``matches: [{path: {type: PathPrefix, value: /}}]`` to the service itself
   comes first, so that requests no rule matches still reach the service;
3. rules with identical ``matches`` are merged as JSON Merge Patches of their ``default`` (the later, more
   specific one wins; ``filters`` and ``backendRefs`` are lists and are replaced, not concatenated);
4. every (rule, match) pair becomes one route, sorted by :func:`precedence` (Gateway API's order).

Backends with tags (``MeshServiceSubset``, or ``MeshService`` with ``tags``) get a subset cluster of their own,
``<service>_<hash of the tags>``, whose endpoints are the service's instances with those tags.

Every route of an outbound with MeshHTTPRoute rules, the implicit default one included, has Envoy's per-route
stats under :func:`route_stat_prefix` of its name (``my-route/to[0]/rules[1]`` -> ``my-route_to_0_rules_1``),
which MeshMetric's agent exposes with a ``route`` label; an outbound without rules has none (no per-request cost).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from isthmus.context.mesh_context import MeshContext
from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, Endpoint, EndpointSet, OutboundListener, Protocol, ProxyIR
from isthmus.ir.traffic import HeaderModifier as HeaderModifierIR
from isthmus.ir.traffic import HttpRoute, Mirror, Redirect, RouteMatch, ValueMatch, WeightedBackend
from isthmus.policies.engine import (
    Origin,
    destination_matches,
    merge_patch,
    selects_proxy,
    service_tag_to_key,
)
from isthmus.policies.matching import tags_match
from isthmus.policies.meshhttproute.api import BackendRef, HeaderModifier, Match, MeshHTTPRouteSpec, RuleConf
from isthmus.policies.plugin import PolicyInputs, add_clusters, policy_type
from isthmus.resources.common import TargetRef, TargetRefKind
from isthmus.resources.registry import Resource

DEFAULT_ROUTE = "default"
CATCH_ALL: dict[str, Any] = {"path": {"type": "PathPrefix", "value": "/"}}


# -- which `to` items apply, in Kuma's order ----------------------------------------------------------------------
def _top_ref(policy: Resource) -> TargetRef:
    ref = getattr(policy.spec, "target_ref", None)
    return ref if isinstance(ref, TargetRef) else TargetRef(kind=TargetRefKind.MESH)


def ordered_to_items(
    policies: Iterable[Resource], dp: Resource, service: str
) -> list[tuple[Resource, int, Any]]:
    """``(policy, index, to item)`` of the policies that select ``dp`` and whose ``to`` names ``service``,
    lowest priority first in Kuma's order for ``kuma.io/service`` outbounds (:func:`service_tag_to_key`: policy
    order, then ``to[]`` index; the ``to`` kind plays no part)."""
    selected = [p for p in policies if selects_proxy(_top_ref(p), dp)]
    entries: list[tuple[tuple[Any, ...], Resource, int, Any]] = []
    for position, policy in enumerate(sorted(selected, key=lambda p: p.name, reverse=True)):
        for i, item in enumerate(getattr(policy.spec, "to", None) or []):
            if destination_matches(item.target_ref, service):
                key = service_tag_to_key(policy, position, i, item.target_ref.kind)
                entries.append((key, policy, i, item))
    entries.sort(key=lambda e: e[0])
    return [(policy, i, item) for _, policy, i, item in entries]


# -- rule merging and precedence ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergedRule:
    name: str  # "<policy>/to[i]/rules[j]" of the highest-priority contributor, or "default"
    matches: tuple[Match, ...]
    conf: RuleConf
    priority: int  # position of the highest-priority contributor (-1: the implicit default rule)
    origins: tuple[Origin, ...]


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def merge_rules(service: str, items: Iterable[tuple[Resource, int, Any]]) -> tuple[MergedRule, ...]:
    """The rules for one destination: the implicit default, then every rule of ``items`` (lowest priority
    first), those with identical ``matches`` merged; in first-seen order (see :func:`sorted_routes`)."""
    default_conf = {"backendRefs": [{"kind": "MeshService", "name": service, "weight": 1}]}
    key = json.dumps([CATCH_ALL], sort_keys=True)
    acc: dict[str, dict[str, Any]] = {
        key: {
            "matches": [CATCH_ALL],
            "conf": default_conf,
            "name": DEFAULT_ROUTE,
            "priority": -1,
            "origins": [],
        }
    }
    position = 0
    for policy, i, item in items:
        for j, rule in enumerate(item.rules):
            matches = [_dump(m) for m in rule.matches]
            key = json.dumps(matches, sort_keys=True)
            conf = _dump(rule.default)
            origin = Origin(policy.type.kind, policy.name, f"to[{i}].rules[{j}]")
            name = f"{policy.name}/to[{i}]/rules[{j}]"
            if key in acc:
                entry = acc[key]
                entry["conf"] = merge_patch(entry["conf"], conf)
                entry.update(name=name, priority=position)
                entry["origins"].append(origin)
            else:
                acc[key] = {
                    "matches": matches,
                    "conf": conf,
                    "name": name,
                    "priority": position,
                    "origins": [origin],
                }
            position += 1
    return tuple(
        MergedRule(
            name=e["name"],
            matches=tuple(Match.model_validate(m) for m in e["matches"]),
            conf=RuleConf.model_validate(e["conf"]),
            priority=e["priority"],
            origins=tuple(e["origins"]),
        )
        for e in acc.values()
    )


def _is_root(match: Match) -> bool:
    return match.path is None or (match.path.type == "PathPrefix" and match.path.value.rstrip("/") == "")


def precedence(match: Match) -> tuple[int, ...]:
    """Sort key of a match, most specific first (Gateway API's HTTPRoute order, extended for regexes):

    1. the path: ``Exact``, then ``PathPrefix`` (longer prefix first), then ``RegularExpression`` (longer
       expression first), then no path or the root prefix ``/`` (they match every path);
    2. a ``method`` before none;
    3. more ``headers`` matches first;
    4. more ``queryParams`` matches first.

    Ties go to the rule of the higher-priority policy, then to the order of the rules.
    """
    path = match.path
    if path is None or _is_root(match):
        kind, length = 3, 0
    elif path.type == "Exact":
        kind, length = 0, len(path.value)
    elif path.type == "PathPrefix":
        kind, length = 1, len(path.value.rstrip("/"))
    else:
        kind, length = 2, len(path.value)
    return (
        kind,
        -length,
        0 if match.method else 1,
        -len(match.headers or []),
        -len(match.query_params or []),
    )


def sorted_matches(rules: Iterable[MergedRule]) -> list[tuple[MergedRule, Match]]:
    """Every (rule, match) pair in route order."""
    pairs = [(rule, j, match) for rule in rules for j, match in enumerate(rule.matches)]
    pairs.sort(key=lambda p: (precedence(p[2]), -p[0].priority, p[1]))
    return [(rule, match) for rule, _, match in pairs]


_MEMO: dict[tuple[str, ...], tuple[MergedRule, ...]] = {}
_MEMO_LIMIT = 20_000


def resolve_rules(policies: Iterable[Resource], dp: Resource, service: str) -> tuple[MergedRule, ...] | None:
    """The merged rules for ``dp``'s outbound to ``service``; None when no MeshHTTPRoute applies. Memoised on
    the content of the applicable policies: most proxies of a mesh share them."""
    items = ordered_to_items(policies, dp, service)
    if not items:
        return None
    key = (service, *(f"{p.digest}/{i}" for p, i, _ in items))
    found = _MEMO.get(key)
    if found is None:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        found = _MEMO[key] = merge_rules(service, items)
    return found


# -- backends and subset clusters ---------------------------------------------------------------------------------
def subset_cluster_name(service: str, tags: Mapping[str, str], port: int | None = None) -> str:
    """``<service>_<10 hex digits of sha256 over the sorted tags (and port)>``: stable across proxies."""
    key = json.dumps([sorted(tags.items()), port], separators=(",", ":"))
    return f"{service}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class Backends:
    """Turns backendRefs into cluster names for one proxy, creating the subset (and other-service) clusters it
    needs; :meth:`add_to` adds them to the IR."""

    def __init__(self, ir: ProxyIR, ctx: MeshContext) -> None:
        self.ctx = ctx
        self.ir = ir
        self.clusters = {c.name: c for c in ir.clusters}
        self.new: dict[str, tuple[Cluster, EndpointSet | None]] = {}

    def _endpoints(self, service: str, tags: Mapping[str, str], port: int | None) -> tuple[Endpoint, ...]:
        found = {
            Endpoint(e.address, e.port)
            for e in self.ctx.endpoints.get(service, ())
            if e.ready and tags_match(tags, e.tags) and (port is None or e.port == port)
        }
        return tuple(sorted(found, key=lambda e: (e.address, e.port)))

    def _add(self, cluster: Cluster, endpoints: EndpointSet) -> None:
        self.clusters[cluster.name] = cluster
        self.new[cluster.name] = (cluster, endpoints)

    def base(self, outbound: OutboundListener, service: str) -> Cluster:
        """The plain cluster of ``service``: the outbound's own, another outbound's, or a new one."""
        if service == outbound.service:
            return self.clusters[outbound.cluster]
        other = next((o for o in self.ir.outbounds if o.service == service), None)
        if other is not None and other.cluster in self.clusters:
            return self.clusters[other.cluster]
        if service in self.clusters and self.clusters[service].service == service:
            return self.clusters[service]
        template = self.clusters[outbound.cluster]
        protocol = Protocol.TCP if self.ctx.service_protocol(service) == "tcp" else Protocol.HTTP2
        cluster = Cluster(
            name=service,
            protocol=protocol,
            eds=True,
            tls=template.tls,
            verify_spiffe_id=f"spiffe://{self.ctx.name}/{service}" if template.tls is not None else "",
            service=service,
        )
        self._add(cluster, EndpointSet(service, self._endpoints(service, {}, None)))
        return cluster

    def cluster(self, outbound: OutboundListener, ref: BackendRef) -> str:
        tags = dict(ref.tags or {})
        if ref.name == outbound.service and not tags and ref.port is None:
            return outbound.cluster
        base = self.base(outbound, ref.name)
        if not tags and ref.port is None:
            return base.name
        name = subset_cluster_name(ref.name, tags, ref.port)
        if name not in self.clusters:
            subset = evolve(base, name=name, subset=tuple(sorted(tags.items())))
            self._add(subset, EndpointSet(name, self._endpoints(ref.name, tags, ref.port)))
        return name

    def weighted(self, outbound: OutboundListener, refs: Iterable[BackendRef]) -> tuple[WeightedBackend, ...]:
        """Backends with a weight above 0, in order; refs resolving to the same cluster add up."""
        weights: dict[str, int] = {}
        for ref in refs:
            if ref.weight > 0:
                name = self.cluster(outbound, ref)
                weights[name] = weights.get(name, 0) + ref.weight
        return tuple(WeightedBackend(name, weight) for name, weight in weights.items())

    def add_to(self, ir: ProxyIR) -> ProxyIR:
        return add_clusters(ir, self.new) if self.new else ir


# -- rules -> IR --------------------------------------------------------------------------------------------------
_NOT_IN_STAT_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def route_stat_prefix(name: str) -> str:
    """The Envoy ``stat_prefix`` of the route named ``name``: every run of characters other than letters, digits,
    ``_`` and ``-`` becomes one ``_`` (Envoy splits stat names at dots and its tag extraction stops at other
    punctuation), without a leading or trailing ``_``; stable, as the route's name is."""
    return _NOT_IN_STAT_NAME.sub("_", name).strip("_") or "route"


def route_match(match: Match) -> RouteMatch:
    path = match.path
    return RouteMatch(
        path_type=path.type if path is not None else None,
        path=path.value if path is not None else "",
        method=match.method,
        headers=tuple(ValueMatch(h.name, h.type, h.value or "") for h in match.headers or []),
        query=tuple(ValueMatch(q.name, q.type, q.value) for q in match.query_params or []),
    )


def _header_modifier(modifiers: list[HeaderModifier]) -> HeaderModifierIR | None:
    if not modifiers:
        return None
    return HeaderModifierIR(
        set=tuple((h.name, h.value) for m in modifiers for h in m.set or []),
        add=tuple((h.name, h.value) for m in modifiers for h in m.add or []),
        remove=tuple(name for m in modifiers for name in m.remove or []),
    )


def http_route(
    name: str, match: Match | None, conf: RuleConf, outbound: OutboundListener, backends: Backends
) -> HttpRoute:
    """One route: ``match`` (None or the root prefix: every request) and the rule's merged ``default``."""
    request = _header_modifier(
        [
            f.request_header_modifier
            for f in conf.of_type("RequestHeaderModifier")
            if f.request_header_modifier
        ]
    )
    response = _header_modifier(
        [
            f.response_header_modifier
            for f in conf.of_type("ResponseHeaderModifier")
            if f.response_header_modifier
        ]
    )
    redirect: Redirect | None = None
    for f in conf.of_type("RequestRedirect"):
        r = f.request_redirect
        assert r is not None
        redirect = Redirect(
            scheme=r.scheme,
            hostname=r.hostname,
            port=r.port,
            status_code=r.status_code or 302,
            path_full=r.path.replace_full_path if r.path else None,
            path_prefix=r.path.replace_prefix_match if r.path else None,
        )
    rewrite_prefix = rewrite_full = rewrite_host = None
    to_backend = False
    for f in conf.of_type("URLRewrite"):
        u = f.url_rewrite
        assert u is not None
        rewrite_host = u.hostname
        to_backend = bool(u.host_to_backend_hostname)
        if u.path is not None:
            rewrite_prefix = u.path.replace_prefix_match
            rewrite_full = u.path.replace_full_path
    mirrors = tuple(
        Mirror(backends.cluster(outbound, f.request_mirror.backend_ref), f.request_mirror.percent)
        for f in conf.of_type("RequestMirror")
        if f.request_mirror is not None
    )
    weighted: tuple[WeightedBackend, ...] = ()
    if redirect is None:
        weighted = backends.weighted(outbound, conf.backend_refs or [])
        if not weighted:
            weighted = (WeightedBackend(outbound.cluster, 1),)
    return HttpRoute(
        name=name,
        matches=() if match is None or _is_root_only(match) else (route_match(match),),
        backends=weighted,
        request_headers=request,
        response_headers=response,
        rewrite_prefix=rewrite_prefix,
        rewrite_full_path=rewrite_full,
        rewrite_host=rewrite_host,
        rewrite_host_to_backend=to_backend,
        redirect=redirect,
        mirrors=mirrors,
        stat_prefix=route_stat_prefix(name),
    )


def _is_root_only(match: Match) -> bool:
    return _is_root(match) and not match.method and not match.headers and not match.query_params


def outbound_routes(
    outbound: OutboundListener, rules: Iterable[MergedRule], backends: Backends
) -> tuple[HttpRoute, ...]:
    return tuple(
        http_route(rule.name, match, rule.conf, outbound, backends) for rule, match in sorted_matches(rules)
    )


class MeshHTTPRoutePlugin:
    resource_type = policy_type("MeshHTTPRoute", "meshhttproutes", MeshHTTPRouteSpec, "mhr")
    order = 100

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        backends = Backends(ir, inputs.ctx)
        outbounds = []
        for outbound in ir.outbounds:
            rules = None
            if outbound.protocol is not Protocol.TCP:
                rules = resolve_rules(inputs.policies, inputs.dataplane, outbound.service)
            if rules is None:
                outbounds.append(outbound)
                continue
            outbounds.append(evolve(outbound, routes=outbound_routes(outbound, rules, backends)))
        return backends.add_to(evolve(ir, outbounds=tuple(outbounds)))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        """Per outbound: ``conf.rules`` in route order (each with its matches, merged ``default`` and origins),
        and every contributing rule lowest priority first in ``origins``."""
        from isthmus.policies.engine import dataplane_spec

        outbounds = []
        for outbound in dataplane_spec(inputs.dataplane).networking.outbound:
            items = ordered_to_items(inputs.policies, inputs.dataplane, outbound.service)
            rules = resolve_rules(inputs.policies, inputs.dataplane, outbound.service)
            if rules is None:
                continue
            outbounds.append(
                {
                    "port": outbound.port,
                    "service": outbound.service,
                    "conf": {
                        "rules": [
                            {
                                "name": rule.name,
                                "matches": [_dump(m) for m in match_list],
                                "default": _dump(rule.conf),
                                "origins": [o.as_dict() for o in rule.origins],
                            }
                            for rule, match_list in _rules_in_order(rules)
                        ]
                    },
                    "origins": [
                        Origin(policy.type.kind, policy.name, f"to[{i}].rules[{j}]").as_dict()
                        for policy, i, item in items
                        for j in range(len(item.rules))
                    ],
                }
            )
        return {"inbounds": [], "outbounds": outbounds}


def _rules_in_order(rules: Iterable[MergedRule]) -> list[tuple[MergedRule, tuple[Match, ...]]]:
    seen: dict[str, tuple[MergedRule, list[Match]]] = {}
    for rule, match in sorted_matches(rules):
        seen.setdefault(rule.name, (rule, []))[1].append(match)
    return [(rule, tuple(matches)) for rule, matches in seen.values()]


PLUGIN = MeshHTTPRoutePlugin()
