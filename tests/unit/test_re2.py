"""Regexes are checked and evaluated as Envoy runs them: RE2 syntax and Envoy's program-size limit, at apply (with
the field named), in ``explain``, and in MeshProxyPatch values; the limit is the one the real Envoy enforces."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.ir.traffic import RouteMatch, ValueMatch
from isthmus.policies import regex
from isthmus.policies.explain import route_matches
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds.translate.routes import route_configuration
from tests.unit.policy_fixtures import REG, dataplane, outbound, proxy, web_mesh

BACKEND = "backendRefs: [{kind: MeshService, name: backend}]"
# program sizes 100 and 101 (RE2's count for a literal: one instruction per byte, plus a fixed overhead)
AT_LIMIT = "/x" + "a" * 94
OVER_LIMIT = "/x" + "a" * 95

MESH = web_mesh("backend") + dataplane("backend-1", "127.0.0.2", 20002, 8002, "backend")


def route_doc(match: str) -> dict[str, Any]:
    """A MeshHTTPRoute with one rule whose only match is ``match`` (YAML flow mapping)."""
    (doc,) = load_documents(
        f"""
type: MeshHTTPRoute
mesh: m
name: r
spec:
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    rules:
    - matches: [{match}]
      default: {{{BACKEND}}}
"""
    )
    return doc  # type: ignore[no-any-return]


def refusal(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as info:
        parse_document(doc, REG)
    return [(e.field, e.reason) for e in info.value.errors]


def quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- apply --------------------------------------------------------------------------------------------------------
def test_a_look_ahead_is_refused_at_apply_with_the_field_and_re2s_reason() -> None:
    """Regression: a look-ahead passed Python's ``re``, was stored (201) and then NACKed by every proxy."""
    problems = refusal(route_doc("{path: {type: RegularExpression, value: '/api(?=/v1)'}}"))
    assert len(problems) == 1
    field, reason = problems[0]
    assert field == "spec.to[0].rules[0].matches[0].path.value"
    assert "RE2" in reason and "invalid perl operator: (?=" in reason


@pytest.mark.parametrize(
    ("match", "field", "words"),
    [
        (
            r"{headers: [{type: RegularExpression, name: x-id, value: '(a)\1'}]}",
            "spec.to[0].rules[0].matches[0].headers[0].value",
            "invalid escape sequence",
        ),
        (
            "{queryParams: [{type: Exact, name: a, value: x}, {type: RegularExpression, name: q, value: '(?<=a)b'}]}",
            "spec.to[0].rules[0].matches[0].queryParams[1].value",
            "invalid perl operator",
        ),
        (
            f"{{path: {{type: RegularExpression, value: {quoted(OVER_LIMIT)}}}}}",
            "spec.to[0].rules[0].matches[0].path.value",
            "RE2 program size is 101, the limit is 100",
        ),
        (
            "{path: {type: RegularExpression, value: '/static/[a-zA-Z0-9._-]{0,200}'}}",
            "spec.to[0].rules[0].matches[0].path.value",
            "too complex for Envoy",
        ),
    ],
)
def test_what_envoy_would_refuse_is_refused_with_the_field(match: str, field: str, words: str) -> None:
    ((got_field, reason),) = refusal(route_doc(match))
    assert got_field == field
    assert words in reason


@pytest.mark.parametrize(
    "value",
    [
        AT_LIMIT,  # program size exactly at Envoy's limit
        r"/\p{Greek}+",  # a Unicode script: RE2 syntax that Python's re refuses
        r"/x{2}\z",
        "/(?P<id>[0-9]+)",
        "/(?i:ABC)",
    ],
)
def test_re2_patterns_within_the_limit_are_accepted(value: str) -> None:
    resource = parse_document(
        route_doc(f"{{path: {{type: RegularExpression, value: {quoted(value)}}}}}"), REG
    )
    assert resource.spec_dict()["to"][0]["rules"][0]["matches"][0]["path"]["value"] == value


# -- the real Envoy agrees ----------------------------------------------------------------------------------------
def _backend_routes(regex_value: str) -> dict[str, Any]:
    """The route configuration Isthmus generates for a MeshHTTPRoute whose path regex is ``regex_value``."""
    route = parse_document(
        route_doc(f"{{path: {{type: RegularExpression, value: {quoted(regex_value)}}}}}"), REG
    )
    backend = outbound(proxy(MESH, route))
    routes: dict[str, Any] = json_format.MessageToDict(
        route_configuration(backend), preserving_proto_field_name=True
    )
    return routes


def _envoy_validate(route_config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10001}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": hcm,
                                        "stat_prefix": "l",
                                        "route_config": route_config,
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": router},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [{"name": c, "connect_timeout": "1s"} for c in _clusters(route_config)],
        }
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        [
            str(find_envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(path),
            "-l",
            "error",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _clusters(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["cluster"]} if isinstance(node.get("cluster"), str) else set()
        return found.union(*(_clusters(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_clusters(v) for v in node))
    return set()


def _with_regex(route_config: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return json.loads(json.dumps(route_config).replace(json.dumps(old), json.dumps(new)))  # type: ignore[no-any-return]


def test_envoy_enforces_the_same_limit_and_syntax(tmp_path: Path) -> None:
    accepted = _backend_routes(AT_LIMIT)
    assert AT_LIMIT in json.dumps(accepted)
    ok = _envoy_validate(accepted, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the same configuration with what Isthmus refuses: Envoy refuses it too
    for refused, words in ((OVER_LIMIT, "program size of 101"), ("/api(?=/v1)", "(?=")):
        assert regex.regex_problem(refused) is not None
        bad = _envoy_validate(_with_regex(accepted, AT_LIMIT, refused), tmp_path)
        assert bad.returncode != 0
        assert words in bad.stdout + bad.stderr


# -- explain evaluates with RE2 -----------------------------------------------------------------------------------
def test_explain_matches_with_re2_semantics() -> None:
    greek = RouteMatch(path_type="RegularExpression", path=r"/\p{Greek}+")
    assert route_matches(greek, "/αβγ", "GET", {})
    assert not route_matches(greek, "/abc", "GET", {})
    posix = RouteMatch(path_type="RegularExpression", path="/[[:alpha:]]+")  # Python's re: a set, then "]+"
    assert route_matches(posix, "/abc", "GET", {})
    header = RouteMatch(headers=(ValueMatch("x-v", "RegularExpression", "v[0-9]+"),))
    assert route_matches(header, "/", "GET", {"X-V": "v12"})
    assert not route_matches(header, "/", "GET", {"X-V": "v12x"})  # full match, as Envoy's safe_regex
    query = RouteMatch(query=(ValueMatch("q", "RegularExpression", "a|b"),))
    assert route_matches(query, "/x?q=b", "GET", {})


@pytest.mark.timeout(60)
def test_explain_takes_linear_time_on_a_pattern_that_backtracks_in_python() -> None:
    """``(a+)+b`` against a's without a b: Python's ``re`` backtracks for 2**n steps (this would not finish);
    RE2 answers at once."""
    match = RouteMatch(path_type="RegularExpression", path="/(a+)+b")
    assert not route_matches(match, "/" + "a" * 60, "GET", {})


def test_a_pattern_envoy_refuses_never_matches_in_explain() -> None:
    assert not route_matches(RouteMatch(path_type="RegularExpression", path="/(?=x).*"), "/x", "GET", {})


def test_compiled_patterns_are_cached_and_bounded() -> None:
    assert regex.compile_regex("/c[0-9]+") is regex.compile_regex("/c[0-9]+")
    with pytest.raises(regex.RegexError, match="RE2"):
        regex.compile_regex("(?!x)")
    info = regex._compile.cache_info()
    assert info.maxsize == regex.CACHE_SIZE


def test_resources_apply_with_unicode_values() -> None:
    """The stored form round-trips: what apply accepted validates again when read back."""
    resource = parse_document(route_doc(r"{path: {type: RegularExpression, value: '/\p{Nd}+'}}"), REG)
    again = Resource(
        resource.type,
        resource.mesh,
        resource.name,
        resource.type.spec_model.model_validate(resource.spec_dict()),
    )
    assert again.spec_dict() == resource.spec_dict()
