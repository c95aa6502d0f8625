"""Upstreams, health checks, SNI routes, hashing and upstream TLS as Envoy configuration (Envoy validates it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.gateway import healthchecks
from isthmus.gateway.entities import Upstream, default_healthchecks, validate
from isthmus.gateway.envoy_routes import SNI_FILTER_STATE, cluster_name, route_configuration, sni_regex
from isthmus.gateway.errors import KongError
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.policies.regex import fullmatch
from isthmus.xds import types
from tests.unit.test_gateway_translate import WS, _entities, _envoy_validate, _route, _self_signed, _unpack


def _xds(entities: dict[str, Any], tls: bool = False) -> dict[str, list[dict[str, Any]]]:
    out = translate(
        WS,
        entities,
        [ListenAddress("127.0.0.1", 8000)],
        [ListenAddress("127.0.0.1", 8443)] if tls else [],
    )
    return {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        out[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def _upstream_entities(hc: dict[str, Any], **upstream: Any) -> dict[str, Any]:
    entities = _entities([_route("r-u", name="up", paths=["/u"], service="s-u")])
    entities["services"]["s-u"] = {"id": "s-u", "host": "backend.up", "port": 80, "protocol": "http"}
    entities["upstreams"] = {
        "u": {"id": "u", "name": "backend.up", "healthchecks": _merge(default_healthchecks(), hc), **upstream}
    }
    entities["targets"] = {
        "t1": {"id": "t1", "upstream": {"id": "u"}, "target": "127.0.0.1:9001", "weight": 100},
        "t2": {"id": "t2", "upstream": {"id": "u"}, "target": "localhost:9002", "weight": 50},
    }
    return entities


def test_kong_defaults_mean_no_health_checks() -> None:
    hc = default_healthchecks()
    assert healthchecks.active_health_check(hc, None) is None
    assert healthchecks.outlier_detection(hc) is None
    cluster = next(
        c for c in _xds(_upstream_entities({}))[types.CLUSTER] if c["name"] == cluster_name(WS, "s-u")
    )
    assert "health_checks" not in cluster and "outlier_detection" not in cluster


def test_active_http_checks(tmp_path: Path) -> None:
    hc = {
        "active": {
            "http_path": "/status",
            "timeout": 2,
            "headers": {"x-probe": ["kong"]},
            "healthy": {"interval": 5, "successes": 2, "http_statuses": [200, 201, 202, 302]},
            "unhealthy": {"interval": 1, "http_failures": 3, "tcp_failures": 2, "timeouts": 0},
        },
        "threshold": 25,
    }
    xds = _xds(_upstream_entities(hc))
    cluster = next(c for c in xds[types.CLUSTER] if c["name"] == cluster_name(WS, "s-u"))
    check = cluster["health_checks"][0]
    assert (check["interval"], check["unhealthy_interval"], check["timeout"]) == ("5s", "1s", "2s")
    assert (check["healthy_threshold"], check["unhealthy_threshold"]) == (
        2,
        2,
    )  # the smallest non-zero failures
    http = check["http_health_check"]
    assert http["path"] == "/status"
    assert http["expected_statuses"] == [{"start": "200", "end": "203"}, {"start": "302", "end": "303"}]
    assert {"start": "500", "end": "506"} in http["retriable_statuses"]
    assert http["request_headers_to_add"][0]["header"] == {"key": "x-probe", "value": "kong"}
    # probes in plain text, the target's host name as Host
    assert cluster["transport_socket_matches"][0]["name"] == healthchecks.PROBE_SOCKET
    hosts = [e["endpoint"]["health_check_config"]["hostname"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]  # fmt: skip
    assert hosts == ["127.0.0.1", "localhost"]
    # Kong's threshold: Envoy's panic threshold, failing traffic below it, no overprovisioning
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 25.0}
    assert cluster["common_lb_config"]["zone_aware_lb_config"]["fail_traffic_on_panic"] is True
    assert cluster["load_assignment"]["policy"]["overprovisioning_factor"] == 100
    _envoy_validate(xds, tmp_path)


def test_active_interval_zero_is_never_and_tcp_https_types(tmp_path: Path) -> None:
    only_unhealthy = {"active": {"unhealthy": {"interval": 3, "tcp_failures": 1}}}
    check, _ = healthchecks.active_health_check(_merge(default_healthchecks(), only_unhealthy), None) or (
        {},
        None,
    )
    assert check["interval"] == "3.000s" and check["healthy_threshold"] == healthchecks.NEVER_COUNT
    only_healthy = {"active": {"healthy": {"interval": 3, "successes": 1}, "unhealthy": {"http_failures": 1}}}
    check, _ = healthchecks.active_health_check(_merge(default_healthchecks(), only_healthy), None) or (
        {},
        None,
    )
    assert check["unhealthy_interval"] == healthchecks.NEVER
    tcp = {"active": {"type": "tcp", "healthy": {"interval": 1, "successes": 1}, "unhealthy": {"tcp_failures": 2, "http_failures": 1}}}  # fmt: skip
    check, _ = healthchecks.active_health_check(_merge(default_healthchecks(), tcp), None) or ({}, None)
    assert "tcp_health_check" in check and check["unhealthy_threshold"] == 2
    https = {"active": {"type": "https", "https_sni": "probe.example", "https_verify_certificate": False,
                        "healthy": {"interval": 1, "successes": 1}, "unhealthy": {"interval": 1, "timeouts": 2}}}  # fmt: skip
    xds = _xds(_upstream_entities(https, host_header="backend.example"))
    cluster = next(c for c in xds[types.CLUSTER] if c["name"] == cluster_name(WS, "s-u"))
    socket = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert socket["sni"] == "probe.example" and "common_tls_context" not in socket
    assert cluster["health_checks"][0]["http_health_check"]["host"] == "backend.example"
    _envoy_validate(xds, tmp_path)


def test_passive_checks_are_outlier_detection(tmp_path: Path) -> None:
    hc = {"passive": {"unhealthy": {"http_failures": 2, "tcp_failures": 3, "timeouts": 1}}}
    xds = _xds(_upstream_entities(hc))
    cluster = next(c for c in xds[types.CLUSTER] if c["name"] == cluster_name(WS, "s-u"))
    outlier = cluster["outlier_detection"]
    assert outlier["consecutive_5xx"] == 2 and outlier["enforcing_consecutive_5xx"] == 100
    assert outlier["consecutive_local_origin_failure"] == 1 and outlier["split_external_local_origin_errors"]
    assert outlier["base_ejection_time"] == healthchecks.NEVER and outlier["max_ejection_percent"] == 100
    assert outlier["enforcing_success_rate"] == 0
    assert "health_checks" not in cluster
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {}  # 0: never panic
    tcp_only = _merge(default_healthchecks(), {"passive": {"type": "tcp", "unhealthy": {"http_failures": 2}}})
    assert healthchecks.outlier_detection(tcp_only) is None
    _envoy_validate(xds, tmp_path)


def test_hash_on_consumer_and_uri_capture(tmp_path: Path) -> None:
    entities = _upstream_entities(
        {}, algorithm="consistent-hashing", hash_on="consumer", hash_fallback="uri_capture",
        hash_fallback_uri_capture="user",
    )  # fmt: skip
    entities["routes"]["r-u"]["paths"] = [r"~/users/(?<user>\w+)/items", "/u"]
    xds = _xds(entities)
    routes = {r["name"]: r for r in xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]}
    regex_route = routes[r"up ~/users/(?<user>\w+)/items"]["route"]
    assert regex_route["hash_policy"] == [
        {"header": {"header_name": "x-consumer-id"}, "terminal": True},
        {"header": {"header_name": "x-isthmus-hash-path", "regex_rewrite": {
            "pattern": {"regex": r"^(?:/users/(?<user>\w+)/items).*$"}, "substitution": "\\1"}}},
    ]  # fmt: skip
    # the route copies the path it matched before its rewrite (Envoy hashes after it); the cluster drops the copy
    copied = routes[r"up ~/users/(?<user>\w+)/items"]["request_headers_to_add"][0]["header"]
    assert copied == {"key": "x-isthmus-hash-path", "value": "%REQ(:PATH)%"}
    cluster = next(c for c in xds[types.CLUSTER] if c["name"] == cluster_name(WS, "s-u"))
    options = next(iter(cluster["typed_extension_protocol_options"].values()))
    assert options["http_filters"][0]["typed_config"]["mutations"]["request_mutations"] == [
        {"remove": "x-isthmus-hash-path"}
    ]
    # a prefix path has no capture: only the consumer
    assert routes["up /u"]["route"]["hash_policy"] == [{"header": {"header_name": "x-consumer-id"}}]
    _envoy_validate(xds, tmp_path)


def test_route_snis_match_the_connection_sni_on_https_only(tmp_path: Path) -> None:
    entities = _entities(
        [
            _route("r-a", name="sni-a", paths=["/"], snis=["a.example.com"], protocols=["https"]),
            _route("r-w", name="sni-wild", paths=["/"], snis=["*.example.org"]),
        ]
    )
    cert, key = _self_signed("a.example.com")
    entities["certificates"] = {"c1": {"id": "c1", "cert": cert, "key": key, "created_at": 1}}
    https = {
        r["name"]: r for r in route_configuration(WS, entities, https=True)["virtual_hosts"][0]["routes"]
    }
    matcher = https["sni-a /"]["match"]["filter_state"][0]
    assert matcher["key"] == SNI_FILTER_STATE
    assert fullmatch(matcher["string_match"]["safe_regex"]["regex"], "A.example.com")
    plain = {r["name"]: r for r in route_configuration(WS, entities)["virtual_hosts"][0]["routes"]}
    assert "filter_state" not in plain["sni-wild /"]["match"]  # SNIs do not count for plain HTTP
    assert fullmatch(sni_regex(["*.example.org"]), "x.y.example.org")
    assert not fullmatch(sni_regex(["*.example.org"]), "example.org")
    assert fullmatch(sni_regex(["api.*"]), "api.example.net")
    assert fullmatch(sni_regex(["a.example.com."]), "a.example.com")
    xds = _xds(entities, tls=True)
    tls = next(x for x in xds[types.LISTENER] if x["name"].startswith("kong:https:"))
    assert tls["default_filter_chain"]["filters"][0]["name"] == "envoy.filters.network.set_filter_state"
    _envoy_validate(xds, tmp_path)


def test_upstream_tls_client_certificate_and_verify_depth(tmp_path: Path) -> None:
    entities = _entities([_route("r-t", name="tls", paths=["/t"], service="s-t")])
    cert, key = _self_signed("client.example.com")
    entities["certificates"] = {"cc": {"id": "cc", "cert": cert, "key": key}}
    entities["services"]["s-t"] = {
        "id": "s-t", "host": "api.example.com", "port": 443, "protocol": "https", "tls_verify": True,
        "tls_verify_depth": 2, "client_certificate": {"id": "cc"},
    }  # fmt: skip
    xds = _xds(entities)
    cluster = next(c for c in xds[types.CLUSTER] if c["name"] == cluster_name(WS, "s-t"))
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == "kong:default:certificate:cc"
    assert common["validation_context"]["max_verify_depth"] == 2
    assert [s["name"] for s in xds[types.SECRET]] == ["kong:default:certificate:cc"]
    _envoy_validate(xds, tmp_path)


def _upstream_errors(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(KongError) as caught:
        validate(Upstream, {"name": "backend.up", **data})
    fields: dict[str, Any] = caught.value.body()["fields"]
    return fields


def test_healthchecks_are_checked_at_apply() -> None:
    ok = validate(Upstream, {"name": "ok.up", "healthchecks": {"active": {"healthy": {"interval": 5}}}})
    assert ok.healthchecks["active"]["healthy"] == {
        "interval": 5,
        "http_statuses": [200, 302],
        "successes": 0,
    }
    assert _upstream_errors({"healthchecks": {"threshold": 101}}) == {
        "healthchecks": {"threshold": "value should be between 0 and 100"}
    }
    assert _upstream_errors({"healthchecks": {"active": {"type": "grpc"}}}) == {
        "healthchecks": {"active": {"type": "'grpc' health checks are not supported yet"}}
    }
    bad = _upstream_errors(
        {"healthchecks": {"active": {"http_path": "x", "unhealthy": {"http_failures": 256}},
                          "passive": {"unhealthy": {"http_statuses": [99]}}}}
    )  # fmt: skip
    assert bad["healthchecks"]["active"] == {
        "http_path": "should start with: /",
        "unhealthy": {"http_failures": "value should be between 0 and 255"},
    }
    assert bad["healthchecks"]["passive"]["unhealthy"]["http_statuses"].startswith("expected an array")
    assert _upstream_errors({"algorithm": "latency"}) == {"algorithm": "'latency' is not supported yet"}
