"""request-transformer, response-transformer, ip-restriction and proxy-cache -> Envoy configuration: Kong's
config checks and error bodies, the per-route Envoy configuration, ``envoy --mode validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from isthmus.gateway import plugins
from isthmus.gateway.plugins import ip_restriction, proxy_cache, request_transformer, response_transformer
from isthmus.xds import types
from tests.unit.test_gateway_plugins import _plugin, _violation, _xds
from tests.unit.test_gateway_translate import SVC, _entities, _envoy_validate, _rid, _route

# The configuration examples of Kong's docs pages for these plugins (developer.konghq.com, plugins/<name>/examples)
DOCS_EXAMPLES = [
    ("request-transformer", {"add": {"headers": ["New-Header:Header Value"]}}),
    ("request-transformer", {"append": {"querystring": ["client_id: abc123"]}, "remove": {"headers": ["Header-Name"]}}),
    ("request-transformer", {"replace": {"uri": "/anything/$(uri_captures[1])"}}),
    ("response-transformer", {"add": {"headers": ["New-Header:Header Value"]}}),
    ("response-transformer", {"remove": {"json": ["custom_property"]}}),
    ("ip-restriction", {"allow": ["203.0.113.0/24"], "deny": ["203.0.113.5"]}),
    ("ip-restriction", {"allow": ["203.0.113.1", "192.0.2.0/24"]}),
    ("ip-restriction", {"deny": ["198.51.100.0/24"]}),
    ("proxy-cache", {"response_code": [200], "request_method": ["GET"], "content_type": ["text/plain", "application/json"],
                     "cache_ttl": 300, "strategy": "memory"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "config"), DOCS_EXAMPLES)
def test_kong_docs_examples_are_accepted(name: str, config: dict[str, Any]) -> None:
    assert plugins.config_errors(name, config) == {}


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"name": "request-transformer", "config": {"add": {"headers": ["X-Nothing"]}}},
         {"config": {"add": {"headers": ["invalid value: X-Nothing"]}}}),
        ({"name": "request-transformer", "config": {"add": {"querystring": ["a:1", "b"]}}},
         {"config": {"add": {"querystring": [None, "key 'b' has no value"]}}}),
        ({"name": "request-transformer", "config": {"remove": {"headers": ["bad header"]}}},
         {"config": {"remove": {"headers": ["'bad header' is not a valid header"]}}}),
        ({"name": "request-transformer", "config": {"rename": {"headers": ["x-a:bad name"]}}},
         {"config": {"rename": {"headers": ["'bad name' is not a valid header"]}}}),
        ({"name": "request-transformer", "config": {"http_method": "get"}},
         {"config": {"http_method": "invalid value: get"}}),
        ({"name": "request-transformer", "config": {"add": {"body": ["a:$(query_params.a or 'x')"]}}},
         {"config": {"add": {"body": "template '$(query_params.a or 'x')' is not supported yet"}}}),
        ({"name": "request-transformer", "config": {"add": {"querystring": ["a:$(uri_captures[1])"]}}},
         {"config": {"add": {"querystring": "uri_captures templates are supported in replace.uri only (not supported yet here)"}}}),
        ({"name": "request-transformer", "config": {"remove": {"headers": ["x-b"]}, "add": {"headers": ["x-a:$(headers.x_b)"]}}},
         {"config": {"add": {"headers": "a template reading header 'x-b', which this configuration changes, is not supported yet"}}}),
        ({"name": "request-transformer", "config": {"replace": {"uri": "/$(uri_captures[1])/$(query_params.a)"}}},
         {"config": {"replace": {"uri": "uri_captures with other templates in replace.uri are not supported yet"}}}),
        ({"name": "response-transformer", "config": {"add": {"headers": ["x-a"]}}},
         {"config": {"add": {"headers": ["invalid value: x-a"]}}}),
        ({"name": "response-transformer", "config": {"append": {"json_types": ["object"]}}},
         {"config": {"append": {"json_types": ["expected one of: boolean, number, string"]}}}),
        ({"name": "ip-restriction", "config": {}},
         {"config": {"@entity": ["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]}}),
        ({"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8", "300.1.1.1"]}},
         {"config": {"allow": [None, "invalid ip or cidr range: '300.1.1.1'"]}}),
        ({"name": "proxy-cache", "config": {}}, {"config": {"strategy": "required field missing"}}),
        ({"name": "proxy-cache", "config": {"strategy": "redis"}}, {"config": {"strategy": "expected one of: memory"}}),
        ({"name": "proxy-cache", "config": {"strategy": "memory", "response_code": [99]}},
         {"config": {"response_code": ["value should be between 100 and 900"]}}),
        ({"name": "proxy-cache", "config": {"strategy": "memory", "response_code": []}},
         {"config": {"response_code": "length must be at least 1"}}),
        ({"name": "proxy-cache", "config": {"strategy": "memory", "cache_ttl": 0}},
         {"config": {"cache_ttl": "value must be greater than 0"}}),
        ({"name": "proxy-cache", "config": {"strategy": "memory", "memory": {"dictionary_name": "mine"}}},
         {"config": {"@entity": ["missing shared dict 'mine'"]}}),
    ],
)  # fmt: skip
def test_bad_configs_get_kongs_error_body(data: dict[str, Any], fields: dict[str, Any]) -> None:
    body = _violation(data)
    assert body["name"] == "schema violation"
    assert body["fields"] == fields


def test_request_transformer_mutations_in_kongs_order() -> None:
    config = request_transformer.Config.model_validate(
        {
            "remove": {"headers": ["X-Gone", "Host"], "querystring": ["q1"]},
            "rename": {"headers": ["X-Old:X-New"], "querystring": ["qa:qb"]},
            "replace": {"headers": ["X-Rep:v", "Host:upstream.example"], "querystring": ["qr:R"]},
            "add": {"headers": ["New-Header:Header Value", "x-pct:50%"], "querystring": ["qadd:A"]},
            "append": {"headers": ["X-App:two"], "querystring": ["client_id: abc123"]},
        }
    )
    headers, host = request_transformer.header_mutations(config)
    assert host == "upstream.example"
    assert headers == [
        {"remove": "x-gone"},
        {"append": {"header": {"key": "x-new", "value": "%REQ(x-old)%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}},
        {"remove": "x-old"},
        {"append": {"header": {"key": "x-rep", "value": "v"}, "append_action": "OVERWRITE_IF_EXISTS"}},
        {"append": {"header": {"key": "new-header", "value": "Header Value"}, "append_action": "ADD_IF_ABSENT"}},
        {"append": {"header": {"key": "x-pct", "value": "50%%"}, "append_action": "ADD_IF_ABSENT"}},
        {"append": {"header": {"key": "x-app", "value": "two"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}},
    ]  # fmt: skip
    query = request_transformer.query_mutations(config, frozenset({"qa"}))
    assert [m.get("remove") or m["append"]["record"]["key"] for m in query] == [
        "q1", "qb", "qa", "qr", "qadd", "client_id"
    ]  # fmt: skip
    assert query[-1]["append"] == {
        "record": {"key": "client_id", "value": " abc123"},
        "action": "APPEND_IF_EXISTS_OR_ADD",
    }
    # without the renamed parameter, nothing is renamed (Kong renames only a parameter that is there)
    assert "qb" not in [m.get("append", {}).get("record", {}).get("key") for m in request_transformer.query_mutations(config, frozenset())]  # fmt: skip


def test_request_transformer_routes(tmp_path: Path) -> None:
    entities = _entities([
        _route(_rid(1), name="users", paths=["~/users/(?<uid>\\d+)"]),
        _route(_rid(2), name="plain", paths=["/plain"]),
    ])  # fmt: skip
    uri = {"replace": {"uri": "/anything/$(uri_captures[1])/$(uri_captures.uid)"}}
    renames = {
        "rename": {"querystring": ["a:b", "c:d"]},
        "replace": {"headers": ["host:up.example"]},
        "http_method": "POST",
    }
    entities["plugins"] = {
        "p1": _plugin("p1", "request-transformer", uri, route=_rid(1)),
        "p2": _plugin("p2", "request-transformer", renames, route=_rid(2)),
    }
    xds = _xds(entities)
    routes = xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]
    users = [r for r in routes if r["name"].startswith("users")]
    assert {r["route"]["regex_rewrite"]["substitution"] for r in users} == {"/anything/\\1/\\1"}
    plain = [r for r in routes if r["name"] == "plain /plain"]
    # one variant per set of renamed parameters present, the largest sets first
    assert [[q["name"] for q in r["match"].get("query_parameters", [])] for r in plain] == [
        ["a", "c"], ["a"], ["c"], []
    ]  # fmt: skip
    assert all(r["route"]["host_rewrite_literal"] == "up.example" for r in plain)
    last = plain[-1]["typed_per_filter_config"]
    edits = json.loads(last[request_transformer.LUA_FILTER]["filter_context"]["edits"])
    assert edits == {
        "method": "POST",
        "body": False,
        "remove": [],
        "rename": [],
        "replace": [],
        "add": [],
        "append": [],
    }
    assert "query_parameter_mutations" not in last.get(request_transformer.FILTER, {}).get("mutations", {})
    first = plain[0]["typed_per_filter_config"][request_transformer.FILTER]["mutations"]
    assert first["query_parameter_mutations"][0]["append"]["record"] == {
        "key": "b",
        "value": "%QUERY_PARAM(a)%",
    }
    _envoy_validate(xds, tmp_path)


def test_response_transformer_mutations() -> None:
    config = response_transformer.Config.model_validate(
        {"remove": {"headers": ["X-A"]}, "rename": {"headers": ["X-B:X-C"]}, "replace": {"headers": ["X-D:d"]},
         "add": {"headers": ["X-E:e", "X-Empty:"]}, "append": {"headers": ["X-F:f"]}}
    )  # fmt: skip
    assert response_transformer.mutations(config) == [
        {"remove": "x-a"},
        {"append": {"header": {"key": "x-c", "value": "%RESP(x-b)%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}},
        {"remove": "x-b"},
        {"append": {"header": {"key": "x-d", "value": "d"}, "append_action": "OVERWRITE_IF_EXISTS"}},
        {"append": {"header": {"key": "x-e", "value": "e"}, "append_action": "ADD_IF_ABSENT"}},
        {"append": {"header": {"key": "x-f", "value": "f"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}},
    ]  # fmt: skip


def test_request_transformer_templates() -> None:
    parts = request_transformer.template(
        'a $(headers.X_Custom)/$(query_params["q"]) $(uri_captures[2])$(uri_captures.id)'
    )
    assert parts == [("lit", "a "), ("header", "x-custom"), ("lit", "/"), ("query", "q"), ("lit", " "),
                     ("capture", "2"), ("capture", "id")]  # fmt: skip
    config = request_transformer.Config.model_validate(
        {"add": {"headers": ["x-copy:$(headers.x_src)-100%"], "querystring": ["q2:$(query_params.q)"],
                 "body": ["who:$(headers[\"x-src\"])"]},
         "replace": {"uri": "/v2/$(query_params.id)"}}
    )  # fmt: skip
    assert plugins.config_errors("request-transformer", config.model_dump()) == {}
    headers, _ = request_transformer.header_mutations(config)
    assert headers[0]["append"]["header"]["value"] == "%REQ(x-src)%-100%%"
    assert (
        request_transformer.query_mutations(config, frozenset())[0]["append"]["record"]["value"]
        == "%QUERY_PARAM(q)%"
    )
    edits = json.loads(request_transformer.lua_edits(config) or "")
    assert edits["uri"] == [["lit", "/v2/"], ["query", "id"]]
    assert edits["add"] == [["who", [["header", "x-src"]]]]


def test_transformer_body_edits() -> None:
    request = request_transformer.Config.model_validate(
        {"remove": {"body": ["a"]}, "rename": {"body": ["b:c"]}, "add": {"body": ["d:1:2"]}}
    )
    assert json.loads(request_transformer.lua_edits(request) or "") == {
        "body": True, "remove": ["a"], "rename": [["b", "c"]], "replace": [], "add": [["d", "1:2"]], "append": []
    }  # fmt: skip
    assert request_transformer.lua_edits(request_transformer.Config()) is None
    response = response_transformer.Config.model_validate(
        {"add": {"json": ["n:42", "s:text", "e:"], "json_types": ["number"]}, "remove": {"json": ["x"]}}
    )
    assert json.loads(response_transformer.json_edits(response) or "") == {
        "remove": ["x"], "rename": [], "replace": [], "append": [],
        "add": [["n", "42", "number"], ["s", "text", None], ["e", "null", None]],
    }  # fmt: skip


def test_ip_restriction_policy_deny_wins() -> None:
    config = ip_restriction.Config.model_validate(
        {"allow": ["203.0.113.0/24"], "deny": ["203.0.113.5", "2001:db8::/32"]}
    )
    rbac = ip_restriction.policy(config)["rbac"]
    assert "rules" not in rbac  # shadow only: the Lua reply answers
    principal = rbac["shadow_rules"]["policies"]["ip-restriction"]["principals"][0]
    deny, not_allowed = principal["or_ids"]["ids"]
    assert deny["or_ids"]["ids"] == [
        {"remote_ip": {"address_prefix": "203.0.113.5", "prefix_len": 32}},
        {"remote_ip": {"address_prefix": "2001:db8::", "prefix_len": 32}},
    ]
    assert not_allowed == {"not_id": {"or_ids": {"ids": [{"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}]}}}  # fmt: skip
    reply = ip_restriction.reply(config)["filter_context"]
    assert reply["status"] == "403"
    assert (
        reply["head"] + "198.51.100.7" + reply["tail"]
        == '{\n  "message": "IP address not allowed: 198.51.100.7"\n}\n'
    )
    custom = ip_restriction.reply(ip_restriction.Config(deny=["10.0.0.1"], status=401, message="no"))
    assert custom["filter_context"] == {"status": "401", "body": '{\n  "message": "no"\n}\n'}
    assert plugins.config_errors("ip-restriction", {"deny": ["10.0.0.1"], "status": 200}) == {
        "config": {"status": "a status other than an integer between 400 and 599 is not supported yet"}
    }


def test_proxy_cache_context() -> None:
    config = proxy_cache.Config.model_validate(
        {"strategy": "memory", "content_type": ["Application/JSON; Charset=UTF-8", "text/*", "*"],
         "vary_headers": ["X-V"], "vary_query_params": ["a", "b"], "response_headers": {"X-Cache-Key": False}}
    )  # fmt: skip
    context = proxy_cache.context(config, "r1")
    assert context["types"] == "application/json|charset=UTF-8\ntext/*|\n*/*|\n"
    assert context["codes"] == ",200,301,404,"
    assert context["methods"] == ",GET,HEAD,"
    assert (context["vary_headers"], context["vary_query"]) == ("X-V\n", "a\nb\n")
    assert (context["key_header"], context["status_header"], context["age"]) == ("0", "1", "1")
    assert "storage_ttl" not in context


def test_all_four_validate_with_envoy(tmp_path: Path) -> None:
    entities = _entities([_route(_rid(1), name="all", paths=["/all"])])
    entities["plugins"] = {
        "p1": _plugin("p1", "request-transformer", {"add": {"headers": ["a:1"], "querystring": ["q:1"]}}, service=SVC),
        "p2": _plugin("p2", "response-transformer", {"add": {"headers": ["b:2"]}}),
        "p3": _plugin("p3", "ip-restriction", {"allow": ["10.0.0.0/8", "::1"]}, route=_rid(1)),
        "p4": _plugin("p4", "proxy-cache", {"strategy": "memory", "storage_ttl": 600}, route=_rid(1)),
    }  # fmt: skip
    xds = _xds(entities)
    hcm = xds[types.LISTENER][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    # Kong's priorities: ip-restriction 990, request-transformer 801, response-transformer 800, proxy-cache 100
    order = [
        ip_restriction.FILTER,
        request_transformer.FILTER,
        response_transformer.FILTER,
        proxy_cache.FILTER,
    ]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    route = next(r for r in xds[types.ROUTE][0]["virtual_hosts"][0]["routes"] if r["name"] == "all /all")
    assert set(route["typed_per_filter_config"]) >= {*order, ip_restriction.REPLY_FILTER}
    assert route["typed_per_filter_config"][proxy_cache.FILTER]["filter_context"]["storage_ttl"] == "600"
    _envoy_validate(xds, tmp_path)
