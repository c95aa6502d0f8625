"""MeshHTTPRoute and MeshTCPRoute: schema validation, rule merging and precedence, subset clusters, the IR and
the Envoy routes they produce, and the examples of their docs pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.model import ProxyIR
from isthmus.ir.traffic import HttpRoute, RouteMatch, ValueMatch, WeightedBackend
from isthmus.policies.catalog import plugin_for
from isthmus.policies.explain import route_matches
from isthmus.policies.meshhttproute.api import Match
from isthmus.policies.meshhttproute.plugin import precedence, subset_cluster_name
from isthmus.policies.plugin import PolicyInputs
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds.translate.routes import route_configuration, tcp_proxy
from tests.unit import policy_fixtures
from tests.unit.policy_fixtures import REG, dataplane, outbound, resources, web_mesh

DOCS = Path(__file__).resolve().parents[2] / "docs"

BASE = (
    web_mesh("backend", "db")
    + dataplane("backend-1", "127.0.0.2", 20002, 8002, "backend", version="v1")
    + dataplane("backend-2", "127.0.0.3", 20002, 8002, "backend", version="v2")
    + dataplane("db-1", "127.0.0.4", 20003, 5432, "db", "tcp", version="v1")
    + dataplane("db-2", "127.0.0.5", 20003, 5432, "db", "tcp", version="v2")
)


def http_route(name: str, rules: str, top: str = "{kind: Mesh}", service: str = "backend") -> str:
    return f"""
---
type: MeshHTTPRoute
mesh: m
name: {name}
spec:
  targetRef: {top}
  to:
  - targetRef: {{kind: MeshService, name: {service}}}
    rules:
{rules}
"""


def proxy(extra: str, name: str = "web-1") -> ProxyIR:
    return policy_fixtures.proxy(BASE + extra, name=name)


def outbound_routes(ir: ProxyIR, service: str = "backend") -> tuple[HttpRoute, ...]:
    return outbound(ir, service).routes


def errors_of(doc: str) -> list[str]:
    with pytest.raises(ResourceValidationError) as info:
        for d in load_documents(doc):
            parse_document(d, REG)
    return [str(e) for e in info.value.errors]


# -- schema -------------------------------------------------------------------------------------------------------
RULE_OK = "backendRefs: [{kind: MeshService, name: backend}]"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            f"    - matches: [{{path: {{type: PathPrefix, value: api}}}}]\n      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches[0].path.value: must start with '/' for type PathPrefix",
        ),
        (
            f"    - matches: [{{path: {{type: RegularExpression, value: '/a(['}}}}]\n      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches[0].path.value: is not a valid regular expression",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /}}]\n"
            "      default: {backendRefs: [{kind: MeshService, name: backend, weight: -1}]}",
            "spec.to[0].rules[0].default.backendRefs[0].weight: Input should be greater than or equal to 0",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /}}]\n"
            "      default: {backendRefs: [{kind: MeshService, name: backend, weight: 0}]}",
            "spec.to[0].rules[0].default.backendRefs: at least one weight must be greater than 0",
        ),
        (
            f"    - matches: [{{headers: [{{type: Exact, name: x-a}}]}}]\n      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches[0].headers[0].value: must be set with type Exact",
        ),
        (
            f"    - matches: [{{queryParams: [{{type: RegularExpression, name: q, value: '*'}}]}}]\n"
            f"      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches[0].queryParams[0].value: is not a valid regular expression",
        ),
        (
            f"    - matches: []\n      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches: List should have at least 1 item",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /}}]\n"
            f"      default: {{{RULE_OK}, filters: [{{type: RequestRedirect}}]}}",
            "spec.to[0].rules[0].default.filters[0].requestRedirect: must be set with type RequestRedirect",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /a}}]\n"
            f"      default: {{{RULE_OK}, filters: [{{type: URLRewrite, urlRewrite: "
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}",
            "spec.to[0].rules[0].default.filters[0]: ReplacePrefixMatch needs every match to have a PathPrefix",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /a}}]\n"
            f"      default: {{{RULE_OK}, filters: [{{type: RequestMirror, requestMirror: "
            "{percentage: 120, backendRef: {name: backend}}}]}",
            "spec.to[0].rules[0].default.filters[0].requestMirror.percentage: must be between 0 and 100",
        ),
        (
            "    - matches: [{path: {type: Exact, value: /a}}]\n"
            "      default: {filters: [{type: RequestRedirect, requestRedirect: {hostname: 'Not A Host'}}]}",
            "spec.to[0].rules[0].default.filters[0].requestRedirect.hostname: must be a lower-case DNS name",
        ),
        (
            f"    - matches: [{{method: FETCH}}]\n      default: {{{RULE_OK}}}",
            "spec.to[0].rules[0].matches[0].method: Input should be",
        ),
    ],
)
def test_schema_errors_name_the_field(rules: str, expected: str) -> None:
    errs = errors_of(http_route("r", rules).lstrip("-\n"))
    assert any(e.startswith(expected) for e in errs), errs


def test_schema_checks_target_refs_and_tcp_route() -> None:
    doc = http_route(
        "r", f"    - matches: [{{path: {{type: Exact, value: /}}}}]\n      default: {{{RULE_OK}}}"
    )
    errs = errors_of(doc.replace("{kind: MeshService, name: backend}", "{kind: Mesh}", 1).lstrip("-\n"))
    assert any(e.startswith("spec.to[0].targetRef.kind: value 'Mesh' is not supported") for e in errs), errs
    tcp = """
type: MeshTCPRoute
mesh: m
name: t
spec:
  to:
  - targetRef: {kind: MeshService, name: db}
    rules:
    - default: {backendRefs: [{kind: MeshService, name: db, weight: -5}]}
"""
    errs = errors_of(tcp)
    assert any(e.startswith("spec.to[0].rules[0].default.backendRefs[0].weight") for e in errs), errs
    errs = errors_of(tcp.replace("{backendRefs: [{kind: MeshService, name: db, weight: -5}]}", "{}"))
    assert "spec.to[0].rules[0].default.backendRefs: must have at least one item" in errs


def test_spec_round_trips_through_the_store_form() -> None:
    doc = http_route(
        "r",
        "    - matches: [{path: {type: PathPrefix, value: /a}, headers: [{type: Present, name: x-a}]}]\n"
        "      default:\n"
        "        filters: [{type: RequestMirror, requestMirror: {percentage: '0.5', backendRef: {name: backend}}}]\n"
        "        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 3}]",
    ).lstrip("-\n")
    resource = parse_document(load_documents(doc)[0], REG)
    again = resource.type.spec_model.model_validate(resource.spec_dict())
    assert again == resource.spec


# -- IR: defaults, subsets, splits --------------------------------------------------------------------------------
def test_without_routes_the_outbound_keeps_its_single_cluster() -> None:
    ir = proxy("")
    assert outbound_routes(ir) == ()
    config = route_configuration(outbound(ir))
    (route,) = config.virtual_hosts[0].routes
    assert route.name == "default" and route.match.prefix == "/" and route.route.cluster == "backend"


def test_split_creates_subset_clusters_with_matching_endpoints() -> None:
    ir = proxy(
        http_route(
            "canary",
            "    - matches: [{path: {type: PathPrefix, value: /}}]\n"
            "      default:\n"
            "        backendRefs:\n"
            "        - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}\n"
            "        - {kind: MeshService, name: backend, tags: {version: v2}, weight: 10}",
        )
    )
    v1, v2 = (
        subset_cluster_name("backend", {"version": "v1"}),
        subset_cluster_name("backend", {"version": "v2"}),
    )
    assert v1 != v2 and v1.startswith("backend_")
    # the rule for "/" merged over the implicit default: one route, matching everything
    assert outbound_routes(ir) == (
        HttpRoute(
            name="canary/to[0]/rules[0]",
            backends=(WeightedBackend(v1, 90), WeightedBackend(v2, 10)),
            stat_prefix="canary_to_0_rules_0",
        ),
    )
    clusters = {c.name: c for c in ir.clusters}
    assert clusters[v1].subset == (("version", "v1"),) and clusters[v1].service == "backend"
    assert clusters[v1].eds and clusters[v1].protocol == clusters["backend"].protocol
    endpoints = {e.cluster: e.endpoints for e in ir.endpoints}
    assert [e.address for e in endpoints[v1]] == ["127.0.0.2"]
    assert [e.address for e in endpoints[v2]] == ["127.0.0.3"]
    assert len(endpoints["backend"]) == 2
    # translation: weighted clusters
    envoy = route_configuration(outbound(ir))
    weighted = envoy.virtual_hosts[0].routes[0].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in weighted] == [(v1, 90), (v2, 10)]


def test_catch_all_default_route_stays_last() -> None:
    ir = proxy(
        http_route(
            "testers",
            "    - matches: [{headers: [{type: Exact, name: x-user, value: tester}]}]\n"
            "      default: {backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]}",
        )
    )
    routes = outbound_routes(ir)
    assert [r.name for r in routes] == ["testers/to[0]/rules[0]", "default"]
    assert routes[-1] == HttpRoute(
        name="default", backends=(WeightedBackend("backend", 1),), stat_prefix="default"
    )
    assert routes[0].matches == (RouteMatch(headers=(ValueMatch("x-user", "Exact", "tester"),)),)


def test_identical_matches_merge_and_the_more_specific_policy_wins() -> None:
    rule = (
        "    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n"
        "      default:\n"
        "        filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-by, value: {by}}}]}}}}]\n"
        "        backendRefs: [{{kind: MeshServiceSubset, name: backend, tags: {{version: {v}}}}}]"
    )
    ir = proxy(
        http_route("mesh-wide", rule.format(by="mesh", v="v1"))
        + http_route("for-web", rule.format(by="web", v="v2"), top="{kind: MeshService, name: web}")
    )
    routes = outbound_routes(ir)
    assert [r.name for r in routes] == ["for-web/to[0]/rules[0]", "default"]
    assert routes[0].request_headers is not None and routes[0].request_headers.set == (("x-by", "web"),)
    assert routes[0].backends == (WeightedBackend(subset_cluster_name("backend", {"version": "v2"}), 1),)
    # same kind: the lexicographically smaller name wins
    ir = proxy(
        http_route("bbb", rule.format(by="b", v="v1")) + http_route("aaa", rule.format(by="a", v="v2"))
    )
    assert outbound_routes(ir)[0].name == "aaa/to[0]/rules[0]"


def test_precedence_exact_then_longest_prefix_then_regex_then_root() -> None:
    rules = "\n".join(
        f"    - matches: [{m}]\n      default: {{{RULE_OK}}}"
        for m in (
            "{path: {type: RegularExpression, value: '^/r.*'}}",
            "{path: {type: PathPrefix, value: /a}}",
            "{headers: [{type: Present, name: x-a}]}",
            "{path: {type: PathPrefix, value: /a/b}}",
            "{path: {type: Exact, value: /a/b/c}}",
            "{path: {type: PathPrefix, value: /a}, method: GET}",
            "{path: {type: PathPrefix, value: /a}, headers: [{type: Present, name: x-a}], method: GET}",
            "{path: {type: PathPrefix, value: /a}, method: GET, queryParams: [{type: Exact, name: q, value: v}]}",
        )
    )
    routes = outbound_routes(proxy(http_route("p", rules)))
    assert [r.name.removeprefix("p/to[0]/") for r in routes] == [
        "rules[4]",  # Exact
        "rules[3]",  # longest prefix
        "rules[6]",  # /a + method + 1 header
        "rules[7]",  # /a + method + 1 query param
        "rules[5]",  # /a + method
        "rules[1]",  # /a
        "rules[0]",  # regex
        "rules[2]",  # every path, with a header
        "default",
    ]


def test_precedence_key_orders_matches() -> None:
    def key(raw: dict[str, object]) -> tuple[int, ...]:
        return precedence(Match.model_validate(raw))

    assert key({"path": {"type": "Exact", "value": "/a"}}) < key(
        {"path": {"type": "PathPrefix", "value": "/a"}}
    )
    assert key({"path": {"type": "PathPrefix", "value": "/abc"}}) < key(
        {"path": {"type": "PathPrefix", "value": "/a"}}
    )
    assert key({"path": {"type": "PathPrefix", "value": "/a"}}) < key(
        {"path": {"type": "RegularExpression", "value": "/.*"}}
    )
    assert key({"path": {"type": "PathPrefix", "value": "/"}}) == key({})


def test_routes_match_requests_as_envoy_would() -> None:
    routes = outbound_routes(
        proxy(
            http_route(
                "r",
                "    - matches: [{path: {type: PathPrefix, value: /api/}}]\n"
                f"      default: {{{RULE_OK}}}",
            )
        )
    )
    (match,) = routes[0].matches
    assert route_matches(match, "/api", "GET", {})
    assert route_matches(match, "/api/x", "GET", {})
    assert not route_matches(match, "/apix", "GET", {})
    envoy = route_configuration(outbound(proxy("")))
    assert envoy.virtual_hosts[0].routes[0].match.prefix == "/"


def test_multiple_matches_become_one_route_each_in_precedence_order() -> None:
    routes = outbound_routes(
        proxy(
            http_route(
                "r",
                "    - matches: [{path: {type: PathPrefix, value: /x}}, {path: {type: Exact, value: /y}}]\n"
                f"      default: {{{RULE_OK}}}\n"
                "    - matches: [{path: {type: PathPrefix, value: /x/long}}]\n"
                f"      default: {{{RULE_OK}}}",
            )
        )
    )
    assert [(r.name, r.matches[0].path if r.matches else "") for r in routes] == [
        ("r/to[0]/rules[0]", "/y"),
        ("r/to[0]/rules[1]", "/x/long"),
        ("r/to[0]/rules[0]", "/x"),
        ("default", ""),
    ]


def test_filters_map_to_route_fields_and_envoy() -> None:
    ir = proxy(
        http_route(
            "r",
            "    - matches: [{path: {type: PathPrefix, value: /api}, method: POST, "
            "headers: [{type: Absent, name: x-old}, {type: RegularExpression, name: x-re, value: 'a+'}], "
            "queryParams: [{type: RegularExpression, name: q, value: 'v.*'}]}]\n"
            "      default:\n"
            "        filters:\n"
            "        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-s, value: '1'}], "
            "add: [{name: x-a, value: '2'}], remove: [x-r]}}\n"
            "        - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}\n"
            "        - {type: URLRewrite, urlRewrite: {hostname: new.host, "
            "path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n"
            "        - {type: RequestMirror, requestMirror: {percentage: '12.5', "
            "backendRef: {kind: MeshServiceSubset, name: backend, tags: {version: v2}}}}\n"
            "        backendRefs: [{kind: MeshService, name: backend}]\n"
            "    - matches: [{path: {type: Exact, value: /old}}]\n"
            "      default:\n"
            "        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, "
            "statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]",
        )
    )
    routes = outbound_routes(ir)
    assert [r.name for r in routes] == ["r/to[0]/rules[1]", "r/to[0]/rules[0]", "default"]
    redirect, api = routes[0], routes[1]
    assert redirect.backends == () and redirect.redirect is not None
    assert (redirect.redirect.scheme, redirect.redirect.port, redirect.redirect.status_code) == (
        "https",
        8443,
        308,
    )
    assert api.rewrite_prefix == "/v2" and api.rewrite_host == "new.host"
    assert api.request_headers is not None and api.request_headers.remove == ("x-r",)
    assert api.mirrors[0].percent == 12.5
    envoy = route_configuration(outbound(ir))
    r_redirect, r_api, r_default = envoy.virtual_hosts[0].routes
    assert r_redirect.match.path == "/old"
    assert r_redirect.redirect.path_redirect == "/new" and r_redirect.redirect.port_redirect == 8443
    assert r_api.match.path_separated_prefix == "/api"
    headers = {h.name: h for h in r_api.match.headers}
    assert headers[":method"].string_match.exact == "POST"
    assert headers["x-old"].present_match and headers["x-old"].invert_match
    assert headers["x-re"].string_match.safe_regex.regex == "a+"
    assert r_api.match.query_parameters[0].string_match.safe_regex.regex == "v.*"
    assert r_api.route.prefix_rewrite == "/v2" and r_api.route.host_rewrite_literal == "new.host"
    mirror = r_api.route.request_mirror_policies[0]
    assert mirror.cluster == subset_cluster_name("backend", {"version": "v2"})
    assert mirror.runtime_fraction.default_value.numerator == 125_000
    assert [h.header.key for h in r_api.request_headers_to_add] == ["x-s", "x-a"]
    assert list(r_api.request_headers_to_remove) == ["x-r"]
    assert list(r_api.response_headers_to_remove) == ["server"]
    assert r_default.route.cluster == "backend"


def test_route_applies_only_to_the_proxies_it_selects_and_the_named_service() -> None:
    doc = http_route(
        "only-backend-1",
        f"    - matches: [{{path: {{type: Exact, value: /x}}}}]\n      default: {{{RULE_OK}}}",
        top="{kind: Dataplane, name: backend-1}",
    )
    assert outbound_routes(proxy(doc)) == ()
    other = http_route(
        "to-other",
        f"    - matches: [{{path: {{type: Exact, value: /x}}}}]\n      default: {{{RULE_OK}}}",
        service="elsewhere",
    )
    assert outbound_routes(proxy(other)) == ()


def test_backend_of_another_service_gets_its_cluster() -> None:
    ir = proxy(
        http_route(
            "r",
            "    - matches: [{path: {type: PathPrefix, value: /db}}]\n"
            "      default: {backendRefs: [{kind: MeshService, name: web}]}",
        )
    )
    assert outbound_routes(ir)[0].backends == (WeightedBackend("web", 1),)
    web = next(c for c in ir.clusters if c.name == "web")
    assert web.service == "web" and web.eds
    assert [e.address for e in next(e for e in ir.endpoints if e.cluster == "web").endpoints] == ["127.0.0.1"]


def test_describe_lists_rules_with_origins() -> None:
    mesh, dps, policies = resources(
        BASE
        + http_route(
            "r", f"    - matches: [{{path: {{type: Exact, value: /x}}}}]\n      default: {{{RULE_OK}}}"
        )
    )
    ctx = build_mesh_context(mesh, dps, policies)
    plugin = plugin_for("MeshHTTPRoute")
    assert plugin is not None
    out = plugin.describe(PolicyInputs(ctx, ctx.dataplanes["web-1"], tuple(policies)))
    (described,) = out["outbounds"]
    rules = described["conf"]["rules"]
    assert [r["name"] for r in rules] == ["r/to[0]/rules[0]", "default"]
    origin = {"kind": "MeshHTTPRoute", "policy": "r", "section": "to[0].rules[0]"}
    assert rules[0]["origins"] == [origin] and described["origins"] == [origin]
    assert rules[1]["default"] == {"backendRefs": [{"kind": "MeshService", "name": "backend", "weight": 1}]}


# -- MeshTCPRoute -------------------------------------------------------------------------------------------------
TCP_ROUTE = """
---
type: MeshTCPRoute
mesh: m
name: {name}
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: {service}}}
    rules:
    - default:
        backendRefs:
        - {{kind: MeshServiceSubset, name: {service}, tags: {{version: v1}}, weight: {w1}}}
        - {{kind: MeshServiceSubset, name: {service}, tags: {{version: v2}}, weight: {w2}}}
"""


def test_tcp_route_splits_connections() -> None:
    ir = proxy(TCP_ROUTE.format(name="split", service="db", w1=70, w2=30))
    db = outbound(ir, "db")
    v1, v2 = subset_cluster_name("db", {"version": "v1"}), subset_cluster_name("db", {"version": "v2"})
    assert db.tcp_backends == (WeightedBackend(v1, 70), WeightedBackend(v2, 30))
    proxy_pb = tcp_proxy("s", db)
    assert [(c.name, c.weight) for c in proxy_pb.weighted_clusters.clusters] == [(v1, 70), (v2, 30)]
    assert not proxy_pb.cluster
    # one backend with weight: the TCP proxy goes straight to it
    ir = proxy(TCP_ROUTE.format(name="split", service="db", w1=0, w2=30))
    db = outbound(ir, "db")
    assert tcp_proxy("s", db).cluster == v2
    # the more specific (smaller) name wins as a whole
    ir = proxy(
        TCP_ROUTE.format(name="bbb", service="db", w1=1, w2=1)
        + TCP_ROUTE.format(name="aaa", service="db", w1=5, w2=0)
    )
    assert outbound(ir, "db").tcp_backends == (WeightedBackend(v1, 5),)


def test_tcp_route_on_http_outbound_without_http_route_is_a_catch_all_split() -> None:
    ir = proxy(TCP_ROUTE.format(name="split", service="backend", w1=1, w2=3))
    (route,) = outbound_routes(ir)
    assert route.matches == () and [b.weight for b in route.backends] == [1, 3]
    both = proxy(
        TCP_ROUTE.format(name="split", service="backend", w1=1, w2=3)
        + http_route(
            "h", f"    - matches: [{{path: {{type: Exact, value: /x}}}}]\n      default: {{{RULE_OK}}}"
        )
    )
    assert [r.name for r in outbound_routes(both)] == ["h/to[0]/rules[0]", "default"]


# -- docs examples ------------------------------------------------------------------------------------------------
DOC_PAGES = ("policies/meshhttproute.md", "policies/meshtcproute.md", "guides/canary.md")
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)


def _doc_blocks() -> list[tuple[str, str]]:
    out = []
    for page in DOC_PAGES:
        if not (DOCS / page).exists():
            continue
        for i, block in enumerate(BLOCK.findall((DOCS / page).read_text())):
            if re.search(r"^type: ", block, re.M):
                out.append((f"{page}#{i}", block))
    return out


def test_docs_pages_have_examples() -> None:
    pages = {where.split("#")[0] for where, _ in _doc_blocks()}
    assert pages == set(DOC_PAGES)


@pytest.mark.parametrize(("where", "block"), _doc_blocks(), ids=[w for w, _ in _doc_blocks()])
def test_docs_example_parses_and_applies(where: str, block: str) -> None:
    resources: list[Resource] = [parse_document(d, REG) for d in load_documents(block)]
    routes = [r for r in resources if r.type.kind in ("MeshHTTPRoute", "MeshTCPRoute")]
    if not routes:
        return
    # and it builds a proxy: every example targets backend (or db) from web-1 of the test mesh
    ir = proxy("\n---\n" + block.replace("mesh: default", "mesh: m"))
    touched = [o for o in ir.outbounds if o.routes or o.tcp_backends]
    assert touched, f"{where}: the example changes no outbound of web-1"
