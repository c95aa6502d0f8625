"""Kong plugins -> Envoy configuration (isthmus.gateway.plugins): scoping, config checks, ``envoy --mode validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.gateway import entities as e
from isthmus.gateway import plugins
from isthmus.gateway.errors import KongError
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.xds import types
from tests.unit.test_gateway_translate import SVC, WS, _entities, _envoy_validate, _rid, _route, _unpack


def _plugin(pid: str, name: str, config: dict[str, Any] | None = None, **scope: str) -> dict[str, Any]:
    refs = {k: {"id": v} for k, v in scope.items()}
    return {"id": pid, "name": name, "config": config or {}, "enabled": True, "route": None, "service": None,
            "consumer": None, **refs}  # fmt: skip


def _xds(entities: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000)])
    return {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }


def _routes(xds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]}


def test_most_specific_configuration_wins() -> None:
    a, b, c = _rid(1), _rid(2), _rid(3)
    found = {
        "global": _plugin("p1", "cors", {"origins": ["http://global"]}),
        "service": _plugin("p2", "cors", {"origins": ["http://service"]}, service=SVC),
        "route": _plugin("p3", "cors", {"origins": ["http://route"]}, route=a),
        "both": _plugin("p4", "cors", {"origins": ["http://both"]}, route=b, service=SVC),
        "disabled": {**_plugin("p5", "cors", {"origins": ["http://off"]}, route=c), "enabled": False},
    }
    picked = {rid: plugins.effective(found, rid, SVC)["cors"]["id"] for rid in (a, b, c)}
    assert picked == {a: "p3", b: "p4", c: "p2"}
    assert plugins.effective(found, c, "other")["cors"]["id"] == "p1"


def test_request_termination_answers_its_status_and_body(tmp_path: Path) -> None:
    entities = _entities(
        [_route(_rid(1), name="closed", paths=["/closed"]), _route(_rid(2), name="open", paths=["/open"])]
    )
    entities["plugins"] = {
        "p1": _plugin("p1", "request-termination", {"status_code": 418, "body": "teapot", "content_type": "text/plain"}, route=_rid(1)),
    }  # fmt: skip
    xds = _xds(entities)
    routes = _routes(xds)
    closed = routes["closed /closed"]
    assert closed["direct_response"] == {"status": 418, "body": {"inline_string": "teapot"}}
    assert closed["response_headers_to_add"][0]["header"] == {"key": "content-type", "value": "text/plain"}
    assert "route" in routes["open /open"]
    _envoy_validate(xds, tmp_path)
    # the default: 503 with Kong's error body
    entities["plugins"]["p1"]["config"] = {}
    body = _routes(_xds(entities))["closed /closed"]["direct_response"]
    assert body["status"] == 503 and json.loads(body["body"]["inline_string"]) == {
        "message": "Service unavailable"
    }


def test_cors_policy_per_route(tmp_path: Path) -> None:
    entities = _entities([_route(_rid(1), name="api", paths=["/api"])])
    config = {"origins": ["http://a.example", r"https://.*\.b\.example"], "headers": ["X-A"],
              "exposed_headers": ["X-B"], "credentials": True, "max_age": 600, "methods": ["GET", "POST"]}  # fmt: skip
    entities["plugins"] = {"p1": _plugin("p1", "cors", config, service=SVC)}
    xds = _xds(entities)
    policy = _routes(xds)["api /api"]["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [
        {"exact": "http://a.example"},
        {"safe_regex": {"regex": r"https://.*\.b\.example"}},
    ]
    assert (policy["allow_methods"], policy["allow_headers"], policy["expose_headers"]) == (
        "GET,POST",
        "X-A",
        "X-B",
    )
    assert policy["allow_credentials"] is True and policy["max_age"] == "600"
    hcm = xds[types.LISTENER][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["name"] == "envoy.filters.http.cors"
    _envoy_validate(xds, tmp_path)


def _violation(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(KongError) as info:
        e.validate(e.Plugin, data)
    return info.value.body()


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"name": "request-termination", "config": {"status_code": 700}},
         {"config": {"status_code": "value should be between 100 and 599"}}),
        ({"name": "request-termination", "config": {"message": "x", "body": "y"}},
         {"config": {"message": "message cannot be used with content_type or body"}}),
        ({"name": "request-termination", "config": {"content_type": "text/plain"}},
         {"config": {"content_type": "content_type requires a body"}}),
        ({"name": "cors", "config": {"methods": ["FETCH"]}},
         {"config": {"methods": ["expected one of: GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS, TRACE, CONNECT"]}}),
        ({"name": "cors", "config": {"origins": ["("]}}, {"config": {"origins": "'(' is not a valid regex"}}),
        ({"name": "cors", "config": {"nope": 1}}, {"config": {"nope": "unknown field"}}),
        ({"name": "cors", "consumer": {"id": "6f1d0b1e-0000-4000-8000-00000000000c"}},
         {"consumer": "value must be null"}),
    ],
)  # fmt: skip
def test_config_errors_in_kong_shape(data: dict[str, Any], fields: dict[str, Any]) -> None:
    body = _violation(data)
    assert body["code"] == 2 and body["name"] == "schema violation"
    assert body["fields"] == fields


def test_valid_configs_pass() -> None:
    e.validate(e.Plugin, {"name": "request-termination", "config": {"status_code": 403, "message": "no"}})
    e.validate(e.Plugin, {"name": "cors", "config": {"origins": ["*"], "max_age": 3600}})


def test_correlation_id_header_kept_or_made(tmp_path: Path) -> None:
    entities = _entities([_route(_rid(1), name="api", paths=["/api"])])
    config = {"header_name": "X-Corr", "echo_downstream": True}
    entities["plugins"] = {"p1": _plugin("p1", "correlation-id", config)}
    xds = _xds(entities)
    route = _routes(xds)["api /api"]
    assert route["request_headers_to_add"] == [
        {"header": {"key": "x-corr", "value": "%UNIQUE_ID%"}, "append_action": "ADD_IF_ABSENT"}
    ]
    assert route["response_headers_to_add"][-1]["header"] == {"key": "x-corr", "value": "%REQ(x-corr)%"}
    _envoy_validate(xds, tmp_path)
    body = _violation({"name": "correlation-id", "config": {"generator": "nope"}})
    assert body["fields"] == {"config": {"generator": "expected one of: uuid, uuid#counter, tracker"}}


def test_request_size_limiting_routes_and_buffer(tmp_path: Path) -> None:
    entities = _entities([_route(_rid(1), name="up", paths=["/up"])])
    config = {"allowed_payload_size": 10, "size_unit": "kilobytes", "require_content_length": True}
    entities["plugins"] = {
        "p1": _plugin("p1", "request-size-limiting", config, route=_rid(1)),
        "p2": _plugin("p2", "request-termination", {"status_code": 418}, service=SVC),
    }
    xds = _xds(entities)
    routes = [r for r in xds[types.ROUTE][0]["virtual_hosts"][0]["routes"] if r["name"] == "up /up"]
    # Kong runs request-size-limiting (priority 951) before request-termination (2)
    assert [r["direct_response"]["status"] for r in routes] == [413, 411, 418]
    assert routes[0]["match"]["headers"][-1]["range_match"] == {
        "start": "10241",
        "end": "9223372036854775807",
    }
    assert json.loads(routes[0]["direct_response"]["body"]["inline_string"]) == {
        "message": "Request size limit exceeded"
    }
    hcm = xds[types.LISTENER][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert [n for n in names if not n.startswith("kong.")] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.buffer",
        "isthmus.kong.rate_limiting_status",
        "isthmus.kong.rate_limiting_headers",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    _envoy_validate(xds, tmp_path)
    del entities["plugins"]["p2"]
    proxied = [r for r in _routes_list(_xds(entities)) if r["name"] == "up /up" and "route" in r]
    buffer = proxied[0]["typed_per_filter_config"]["envoy.filters.http.buffer"]
    assert buffer["buffer"]["max_request_bytes"] == 10240


def _routes_list(xds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]
    return routes


def test_rate_limiting_local_buckets_per_window(tmp_path: Path) -> None:
    entities = _entities([_route(_rid(1), name="api", paths=["/api"])])
    entities["plugins"] = {"p1": _plugin("p1", "rate-limiting", {"second": 2, "minute": 5, "limit_by": "ip"})}
    xds = _xds(entities)
    limit = _routes(xds)["api /api"]["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert [d["token_bucket"] for d in limit["descriptors"]] == [
        {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1s"},
        {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "60s"},
    ]
    assert limit["descriptors"][0]["entries"] == [
        {"key": "kong_window", "value": "second"},
        {"key": "remote_address"},
    ]
    assert limit["status"] == {"code": "TooManyRequests"}
    hcm = xds[types.LISTENER][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "local_rate_limited" in json.dumps(hcm["local_reply_config"]["mappers"][0]["filter"])
    _envoy_validate(xds, tmp_path)


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        ({"limit_by": "ip"}, {"config": {"@entity": [
            "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', "
            "'config.day', 'config.month', 'config.year'"]}}),
        ({"minute": 10, "hour": 5}, {"config": {"hour": "The limit for hour(5) cannot be lower than the limit for minute(10)"}}),
        ({"minute": 10, "policy": "redis"}, {"config": {"redis": {"host": "required field missing"}}}),
        ({"minute": 10, "policy": "cluster"}, {"config": {"policy": "policy 'cluster' is not supported yet"}}),
        ({"minute": 0}, {"config": {"minute": "value must be greater than 0"}}),
    ],
)  # fmt: skip
def test_rate_limiting_config_errors(config: dict[str, Any], fields: dict[str, Any]) -> None:
    assert _violation({"name": "rate-limiting", "config": config})["fields"] == fields


def test_a_known_plugin_not_implemented_is_refused() -> None:
    from isthmus.gateway.entities import PLUGINS

    missing = [name for name in PLUGINS if name not in plugins.kinds()]
    if not missing:  # every plugin Isthmus knows is implemented (others get Kong's "not enabled")
        assert _violation({"name": "hmac-auth"})["fields"]["name"].startswith(
            "plugin 'hmac-auth' not enabled"
        )
        return
    body = _violation({"name": missing[0]})
    assert body["fields"] == {"name": f"plugin '{missing[0]}' is not supported yet"}
    assert body["message"] == f"schema violation (name: plugin '{missing[0]}' is not supported yet)"
