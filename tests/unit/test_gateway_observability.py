"""Kong's logging, metrics and tracing plugins -> Envoy configuration: access logs per configuration selecting
their routes, the tracer and per-route sampling, refusals, ``envoy --mode validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from isthmus.gateway import entities as e
from isthmus.gateway.errors import KongError
from isthmus.gateway.plugins import kong_log, observability, tcp_log
from isthmus.xds import types
from tests.unit.test_gateway_plugins import _plugin, _routes, _xds
from tests.unit.test_gateway_translate import SVC, _entities, _envoy_validate, _rid, _route

FORWARDER = {
    "name": tcp_log.FORWARDER_CLUSTER,
    "type": "STATIC",
    "connect_timeout": "1s",
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    },
    "load_assignment": {
        "cluster_name": tcp_log.FORWARDER_CLUSTER,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
                ]
            }
        ],
    },
}


def _workspace(*plugins: dict[str, Any]) -> dict[str, Any]:
    entities = _entities([_route(_rid(1), name="one", paths=["/one"]), _route(_rid(2), paths=["/two"])])
    entities["services"][SVC]["name"] = "svc"
    entities["plugins"] = {p["id"]: p for p in plugins}
    return entities


def _hcm(xds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    chain = xds[types.LISTENER][0]["filter_chains"][0]
    return dict(chain["filters"][0]["typed_config"])


def _validate(xds: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    _envoy_validate({**xds, types.CLUSTER: [*xds[types.CLUSTER], FORWARDER]}, tmp_path)


def test_file_log_one_access_log_selecting_its_routes(tmp_path: Path) -> None:
    xds = _xds(_workspace(_plugin(_rid(10), "file-log", {"path": "/tmp/one.log"}, route=_rid(1))))
    logs = _hcm(xds)["access_log"]
    assert len(logs) == 1 and logs[0]["typed_config"]["path"] == "/tmp/one.log"
    fmt = logs[0]["typed_config"]["log_format"]["json_format"]
    assert fmt["request"]["method"] == "%REQ(:METHOD)%" and fmt["response"]["status"] == "%RESPONSE_CODE%"
    assert set(fmt["latencies"]) == {"request", "kong", "proxy", "receive"}
    expression = logs[0]["filter"]["extension_filter"]["typed_config"]["expression"]
    routes = _routes(xds)
    meta = routes["one /one"]["metadata"]["filter_metadata"][kong_log.METADATA]
    assert meta["route_id"] == _rid(1) and meta["route_name"] == "one" and meta["service_name"] == "svc"
    assert meta["workspace"] == "default" and f"== '{meta['file-log']}'" in expression
    assert "metadata" not in routes[f"{_rid(2)} /two"]
    _validate(xds, tmp_path)


def test_equal_configurations_share_one_access_log() -> None:
    config = {"path": "/tmp/x.log"}
    xds = _xds(_workspace(_plugin(_rid(10), "file-log", config, route=_rid(1)), _plugin(_rid(11), "file-log", config, route=_rid(2))))  # fmt: skip
    assert len(_hcm(xds)["access_log"]) == 1
    metas = [r["metadata"]["filter_metadata"][kong_log.METADATA]["file-log"] for n, r in _routes(xds).items() if n != "no route"]  # fmt: skip
    assert len(set(metas)) == 1


def test_tcp_and_http_log_send_to_the_forwarder(tmp_path: Path) -> None:
    xds = _xds(
        _workspace(
            _plugin(_rid(10), "tcp-log", {"host": "127.0.0.1", "port": 9999}),
            _plugin(
                _rid(11),
                "http-log",
                {"http_endpoint": "http://127.0.0.1:9998/logs", "queue": {"max_batch_size": 5}},
            ),
        )
    )
    logs = _hcm(xds)["access_log"]
    assert {log["name"] for log in logs} == {"envoy.access_loggers.http_grpc"}
    names = sorted(log["typed_config"]["common_config"]["log_name"] for log in logs)
    assert '"plugin":"http-log"' in names[0] and '"max_batch_size":5' in names[0]
    assert '"host":"127.0.0.1"' in names[1] and '"port":9999' in names[1]
    _validate(xds, tmp_path)


def test_prometheus_stats_logger(tmp_path: Path) -> None:
    config = {
        "status_code_metrics": True,
        "latency_metrics": True,
        "bandwidth_metrics": True,
        "per_consumer": True,
    }
    xds = _xds(_workspace(_plugin(_rid(10), "prometheus", config)))
    (log,) = _hcm(xds)["access_log"]
    typed = log["typed_config"]
    counter = typed["counters"][0]["stat"]
    assert counter["name"] == "http_requests_total"
    assert [t["name"] for t in counter["tags"]] == [
        "service",
        "route",
        "code",
        "source",
        "workspace",
        "consumer",
    ]
    assert [h["stat"]["name"] for h in typed["histograms"]] == ["kong_latency_ms", "request_latency_ms", "upstream_latency_ms"]  # fmt: skip
    _validate(xds, tmp_path)
    # all metrics off: nothing to record
    assert "access_log" not in _hcm(_xds(_workspace(_plugin(_rid(10), "prometheus", {}))))


def test_zipkin_tracer_and_route_sampling(tmp_path: Path) -> None:
    config = {"http_endpoint": "http://127.0.0.1:9411/api/v2/spans", "sample_ratio": 0.25,
              "static_tags": [{"name": "team", "value": "core"}], "http_response_header_for_traceid": "x-trace"}  # fmt: skip
    xds = _xds(_workspace(_plugin(_rid(10), "zipkin", config, route=_rid(1))))
    tracing = _hcm(xds)["tracing"]
    assert tracing["provider"]["name"] == "envoy.tracers.zipkin"
    typed = tracing["provider"]["typed_config"]
    assert (
        typed["collector_endpoint"] == "/api/v2/spans" and typed["collector_cluster"] == "kong:default:zipkin"
    )
    assert typed.get("trace_context_option", "USE_B3") == "USE_B3"
    assert tracing.get("random_sampling", {}).get("value", 0) == 0
    route = _routes(xds)["one /one"]
    assert route["tracing"]["random_sampling"] == {"numerator": 250000, "denominator": "MILLION"}
    assert {"tag": "team", "literal": {"value": "core"}} in route["tracing"]["custom_tags"]
    assert any(h["header"]["key"] == "x-trace" for h in route["response_headers_to_add"])
    assert "tracing" not in _routes(xds)[f"{_rid(2)} /two"]
    assert "kong:default:zipkin" in {c["name"] for c in xds[types.CLUSTER]}
    _validate(xds, tmp_path)


def test_opentelemetry_tracer(tmp_path: Path) -> None:
    config = {"traces_endpoint": "http://127.0.0.1:4318/v1/traces", "headers": {"x-token": "t"},
              "resource_attributes": {"service.name": "edge", "env": "prod"}, "sampling_rate": 1}  # fmt: skip
    xds = _xds(_workspace(_plugin(_rid(10), "opentelemetry", config)))
    typed = _hcm(xds)["tracing"]["provider"]["typed_config"]
    assert typed["service_name"] == "edge"
    assert typed["http_service"]["http_uri"]["uri"] == "http://127.0.0.1:4318/v1/traces"
    assert typed["resource_detectors"][0]["typed_config"]["attributes"] == {"env": "prod"}
    assert _routes(xds)["one /one"]["tracing"]["random_sampling"]["numerator"] == 1_000_000
    _validate(xds, tmp_path)


def _violation(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(KongError) as info:
        e.validate(e.Plugin, data)
    fields: dict[str, Any] = info.value.body()["fields"]
    return fields


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"name": "file-log", "config": {"path": "/tmp/x.log", "custom_fields_by_lua": {"a": "return 1"}}},
         {"config": {"custom_fields_by_lua": "custom_fields_by_lua is not supported yet"}}),
        ({"name": "file-log", "config": {"path": "/tmp/*.log"}}, {"config": {"path": "not a valid filename"}}),
        ({"name": "tcp-log", "config": {"host": "h", "port": 70000}},
         {"config": {"port": "value should be between 0 and 65535"}}),
        ({"name": "http-log", "config": {"http_endpoint": "ftp://x/y"}}, {"config": {"http_endpoint": "unsupported scheme"}}),
        ({"name": "prometheus", "config": {"upstream_health_metrics": True}},
         {"config": {"upstream_health_metrics": "upstream_health_metrics is not supported yet"}}),
        ({"name": "zipkin", "config": {"header_type": "jaeger"}}, {"config": {"header_type": "'jaeger' is not supported yet"}}),
        ({"name": "zipkin", "config": {"local_service_name": "edge"}},
         {"config": {"local_service_name": "a value other than 'kong' is not supported yet"}}),
        ({"name": "opentelemetry", "config": {"traces_endpoint": "http://c/v1/traces", "header_type": "b3"}},
         {"config": {"header_type": "'b3' is not supported yet"}}),
        ({"name": "opentelemetry", "config": {}}, {"config": {"traces_endpoint": "required field missing"}}),
    ],
)  # fmt: skip
def test_refusals_name_the_field(data: dict[str, Any], fields: dict[str, Any]) -> None:
    body = _violation(data)
    for key, value in fields["config"].items():
        assert key in body["config"] and value in str(body["config"][key]), body


def test_a_second_collector_in_a_workspace_is_refused() -> None:
    one = _plugin(_rid(10), "zipkin", {"http_endpoint": "http://a:9411/api/v2/spans"})
    same = _plugin(_rid(11), "zipkin", {"http_endpoint": "http://a:9411/api/v2/spans", "sample_ratio": 1}, route=_rid(1))  # fmt: skip
    other = _plugin(_rid(12), "zipkin", {"http_endpoint": "http://b:9411/api/v2/spans"}, route=_rid(2))
    otel = _plugin(_rid(13), "opentelemetry", {"traces_endpoint": "http://a:4318/v1/traces"})
    assert observability.workspace_errors([one], same) == {}
    assert "config.http_endpoint" in observability.workspace_errors([one], other)
    assert "name" in observability.workspace_errors([one], otel)
