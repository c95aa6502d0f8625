"""rate-limiting -> Envoy configuration: ``policy: redis`` descriptors carrying the plan, ``policy: local``
identifiers with Kong's fallbacks, Kong's config checks; every output accepted by ``envoy --mode validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from isthmus.gateway import entities as e
from isthmus.gateway.errors import KongError
from isthmus.gateway.plugins import rate_limiting
from isthmus.gateway.ratelimit_service.plan import Plan
from tests.unit.test_gateway_plugins import _plugin, _routes, _xds
from tests.unit.test_gateway_translate import SVC, _entities, _envoy_validate, _rid, _route

REDIS = {"host": "redis.internal", "port": 6380, "password": "pw", "database": 3, "timeout": 700}


def _one_route(config: dict[str, Any], **scope: str) -> tuple[dict[str, Any], dict[str, Any]]:
    entities = _entities([_route(_rid(1), name="api", paths=["/api"])])
    entities["plugins"] = {"p1": _plugin("p1", "rate-limiting", config, **scope)}
    xds = _xds(entities)
    return _routes(xds)["api /api"], xds


def _plan_of(route: dict[str, Any]) -> tuple[Plan, list[dict[str, Any]]]:
    actions = route["route"]["rate_limits"][0]["actions"]
    return Plan.decode(actions[0]["generic_key"]["descriptor_value"]), actions[1:]


def test_redis_route_descriptor(tmp_path: Path) -> None:
    config = {"minute": 10, "hour": 100, "policy": "redis", "redis": REDIS}
    route, xds = _one_route(config, service=SVC)
    plan, identifiers = _plan_of(route)
    assert plan.limits == (("minute", 10.0), ("hour", 100.0))
    assert (plan.redis.host, plan.redis.port, plan.redis.password, plan.redis.database, plan.redis.timeout_ms) == (
        "redis.internal", 6380, "pw", 3, 700)  # fmt: skip
    # the plugin's scope keys the counters, as Kong's conf.service_id; the route's service is known for limit_by
    assert (plan.route_id, plan.service_id, plan.request_service_id) == (None, SVC, SVC)
    assert identifiers == [
        {"request_headers": {"header_name": "x-consumer-id", "descriptor_key": "consumer", "skip_if_absent": True}},
        {"request_headers": {"header_name": "x-credential-identifier", "descriptor_key": "credential", "skip_if_absent": True}},
        {"remote_address": {}},
    ]  # fmt: skip
    assert "isthmus.kong.rate_limiting_status" not in route.get("typed_per_filter_config", {})
    hcm = xds["type.googleapis.com/envoy.config.listener.v3.Listener"][0]["filter_chains"][0]["filters"][0]
    limit = next(
        f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ratelimit"
    )
    service = limit["typed_config"]["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert service == "isthmus_ratelimit" and limit["typed_config"]["domain"] == "kong"
    assert not limit["typed_config"].get("failure_mode_deny")  # fault_tolerant is the service's answer
    _envoy_validate(xds, tmp_path)


def test_redis_flat_fields_and_custom_answers(tmp_path: Path) -> None:
    config = {"second": 2, "policy": "redis", "limit_by": "header", "header_name": "X-Team",
              "redis_host": "10.1.2.3", "redis_port": 6390, "redis_database": 1, "redis_ssl": True,
              "error_code": 503, "error_message": "slow", "fault_tolerant": False, "hide_client_headers": True}  # fmt: skip
    route, xds = _one_route(config, route=_rid(1))
    plan, identifiers = _plan_of(route)
    assert (plan.redis.host, plan.redis.port, plan.redis.database, plan.redis.ssl) == (
        "10.1.2.3",
        6390,
        1,
        True,
    )
    assert (plan.error_code, plan.error_message, plan.fault_tolerant, plan.hide_client_headers) == (503, "slow", False, True)  # fmt: skip
    assert (plan.route_id, plan.service_id) == (_rid(1), None)
    assert identifiers[0] == {"request_headers": {"header_name": "x-team", "descriptor_key": "header", "skip_if_absent": True}}  # fmt: skip
    # an answer other than 429 goes through the status filter on this route
    lua = route["typed_per_filter_config"]["isthmus.kong.rate_limiting_status"]
    assert lua["name"] == "kong-rate-limiting-status"
    _envoy_validate(xds, tmp_path)


def test_local_consumer_falls_back_to_credential_then_address(tmp_path: Path) -> None:
    route, xds = _one_route({"minute": 5})
    limit = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    entries = [[e["key"] for e in d["entries"]] for d in limit["descriptors"]]
    assert entries == [
        ["kong_window", "kong_by_x-consumer-id"],
        ["kong_window", "kong_absent", "kong_by_x-credential-identifier"],
        ["kong_window", "kong_absent", "remote_address"],
    ]
    assert len(limit["rate_limits"]) == 3
    # one window: Envoy's draft-03 headers renamed as Kong's natively, Retry-After (window / limit) on refusals
    assert "isthmus.kong.rate_limiting_status" not in route["typed_per_filter_config"]
    renames = route["typed_per_filter_config"]["isthmus.kong.rate_limiting_headers"]["mutations"]
    added = {
        m["append"]["header"]["key"]: m["append"]["header"]["value"]
        for m in renames["response_mutations"]
        if "append" in m
    }
    assert added == {
        "X-RateLimit-Limit-Minute": "5",
        "X-RateLimit-Remaining-Minute": "%RESP(x-ratelimit-remaining)%",
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "%RESP(x-ratelimit-remaining)%",
        "RateLimit-Reset": "%RESP(x-ratelimit-reset)%",
    }
    assert [m["remove"] for m in renames["response_mutations"] if "remove" in m] == [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]
    assert limit["response_headers_to_add"] == [{"header": {"key": "Retry-After", "value": "12"}}]
    _envoy_validate(xds, tmp_path)
    # several windows: the Lua filter, which knows the route's windows, picks the tightest one's remainder
    route, xds = _one_route({"minute": 5, "hour": 100})
    lua = route["typed_per_filter_config"]["isthmus.kong.rate_limiting_status"]
    assert lua["name"] == "kong-rate-limiting-headers"
    assert lua["filter_context"] == {"windows": "Minute:5,Hour:100"}
    assert "isthmus.kong.rate_limiting_headers" not in route["typed_per_filter_config"]
    _envoy_validate(xds, tmp_path)
    hidden, _ = _one_route({"minute": 5, "hour": 9, "hide_client_headers": True})
    assert "isthmus.kong.rate_limiting_status" not in hidden["typed_per_filter_config"]
    assert (
        "enable_x_ratelimit_headers"
        not in hidden["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    )


def test_local_path_and_header(tmp_path: Path) -> None:
    route, xds = _one_route({"minute": 5, "limit_by": "path", "path": "/api/v1"})
    limit = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert [d["entries"][1] for d in limit["descriptors"]] == [
        {"key": "kong_path", "value": "/api/v1"},
        {"key": "kong_other_path", "value": "1"},
    ]
    _envoy_validate(xds, tmp_path)
    route, xds = _one_route({"minute": 5, "limit_by": "header", "header_name": "X-Team"})
    limit = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert [d["entries"][-1]["key"] for d in limit["descriptors"]] == ["kong_by_x-team", "remote_address"]
    _envoy_validate(xds, tmp_path)


def _violation(config: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(KongError) as info:
        e.validate(e.Plugin, {"name": "rate-limiting", "config": config})
    fields: dict[str, Any] = info.value.body()["fields"]
    return fields


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        ({"minute": 1, "policy": "redis"}, {"config": {"redis": {"host": "required field missing"}}}),
        ({"minute": 1, "policy": "redis", "redis": {"host": "r", "server_name": "x"}},
         {"config": {"redis": {"server_name": "redis.server_name is not supported yet"}}}),
        ({"minute": 1, "policy": "redis", "redis": {"host": "r", "port": 70000}},
         {"config": {"redis": {"port": "Input should be less than or equal to 65535"}}}),
        ({"minute": 1, "limit_by": "path"}, {"config": {"path": "required field missing"}}),
        ({"minute": 1, "limit_by": "header"}, {"config": {"header_name": "required field missing"}}),
        ({"minute": 1, "error_code": 503},
         {"config": {"error_code": "an error_code other than 429 is not supported yet with policy 'local'"}}),
    ],
)  # fmt: skip
def test_config_errors(config: dict[str, Any], fields: dict[str, Any]) -> None:
    assert _violation(config) == fields


def test_kong_examples_are_accepted() -> None:
    # Kong's plugin page and the Redis integration page, unchanged
    for config in (
        {"second": 5, "hour": 1000, "policy": "local"},
        {"minute": 3, "policy": "redis", "redis": {"host": "redis.example", "port": 6379, "database": 0}},
        {"minute": 10, "limit_by": "consumer", "policy": "redis", "redis_host": "redis.common.svc",
         "redis_port": 6379, "redis_password": None, "redis_database": 0, "redis_timeout": 2000, "fault_tolerant": True,
         "hide_client_headers": False, "day": None, "hour": None, "month": None, "second": None, "year": None},
    ):  # fmt: skip
        e.validate(e.Plugin, {"name": "rate-limiting", "config": config})
    assert rate_limiting.Config.model_validate({"minute": 1, "redis_host": "a"}).redis_settings().host == "a"
