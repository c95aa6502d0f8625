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
        ({"name": "prometheus", "config": {"ai_metrics": True}},
         {"config": {"ai_metrics": "ai_metrics is not supported yet"}}),
        ({"name": "zipkin", "config": {"header_type": "jaeger"}}, {"config": {"header_type": "'jaeger' is not supported yet"}}),
        ({"name": "zipkin", "config": {"local_service_name": "edge"}},
         {"config": {"local_service_name": "a value other than 'kong' is not supported yet"}}),
        ({"name": "opentelemetry", "config": {"traces_endpoint": "http://c/v1/traces", "header_type": "b3"}},
         {"config": {"header_type": "'b3' is not supported yet"}}),
        ({"name": "opentelemetry", "config": {}}, {"config": {"traces_endpoint": "required field missing"}}),
        ({"name": "opentelemetry", "config": {"traces_endpoint": "http://c/v1/traces", "sampling_strategy": "parent_probability_fallback"}},
         {"config": {"sampling_strategy": "'parent_probability_fallback' is not supported yet"}}),
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


# Kong's docs examples for these plugins (developer.konghq.com), as written there
DOCS_EXAMPLES = [
    {"name": "file-log", "config": {"path": "/tmp/file.log"}},
    {"name": "file-log", "config": {"path": "/dev/stdout", "reopen": True}},
    {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": 9999}},
    {"name": "tcp-log", "config": {"host": "logs.example", "port": 6514, "tls": True, "tls_sni": "logs.example",
                                   "timeout": 10000, "keepalive": 60000}},
    {"name": "http-log", "config": {"http_endpoint": "http://mockbin.org/bin/:id", "method": "POST",
                                    "timeout": 1000, "keepalive": 1000, "headers": {"Authorization": "Bearer x"}}},
    {"name": "http-log", "config": {"http_endpoint": "http://127.0.0.1:9001/logs", "queue": {
        "max_batch_size": 200, "max_coalescing_delay": 1, "max_entries": 10000, "max_retry_time": 60}}},
    {"name": "prometheus", "config": {"per_consumer": True, "status_code_metrics": True, "latency_metrics": True,
                                      "bandwidth_metrics": True}},
    {"name": "prometheus"},
    {"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True, "bandwidth_metrics": True,
                                      "upstream_health_metrics": True}},
    {"name": "zipkin", "config": {"http_endpoint": "http://zipkin:9411/api/v2/spans", "sample_ratio": 1,
                                  "include_credential": True, "traceid_byte_count": 16, "header_type": "preserve",
                                  "default_header_type": "b3", "local_service_name": "kong"}},
    {"name": "zipkin", "config": {"http_endpoint": "http://zipkin:9411/api/v2/spans", "sample_ratio": 0.001,
                                  "static_tags": [{"name": "env", "value": "prod"}], "tags_header": "Zipkin-Tags"}},
    {"name": "opentelemetry", "config": {"traces_endpoint": "http://otel-collector:4318/v1/traces",
                                         "resource_attributes": {"service.name": "kong-dev"},
                                         "headers": {"X-Auth-Token": "secret-token"}}},
    {"name": "opentelemetry", "config": {"traces_endpoint": "http://otel-collector:4318/v1/traces",
                                         "sampling_rate": 0.5, "propagation": {"extract": ["w3c"],
                                         "inject": ["preserve"], "default_format": "w3c"}}},
]  # fmt: skip


@pytest.mark.parametrize("example", DOCS_EXAMPLES, ids=lambda x: str(x["name"]))
def test_kong_docs_examples_are_accepted(example: dict[str, Any], tmp_path: Path) -> None:
    entity = e.validate(e.Plugin, example).dump()
    _validate(_xds(_workspace({**entity, "id": _rid(10)})), tmp_path)


def test_a_file_with_two_collectors_is_refused() -> None:
    from isthmus.gateway import declarative
    from isthmus.gateway.store import Workspace

    doc = {
        "_format_version": "3.0",
        "plugins": [
            {"name": "zipkin", "config": {"http_endpoint": "http://a:9411/api/v2/spans"}},
            {"name": "opentelemetry", "config": {"traces_endpoint": "http://b:4318/v1/traces"}},
        ],
    }
    with pytest.raises(KongError) as info:
        declarative.desired(Workspace("default"), doc)
    assert "not supported yet" in info.value.message


def test_kong_metrics_renames_envoy_stats() -> None:
    from isthmus.gateway.kong_metrics import kong_metrics

    envoy = "\n".join(
        [
            "# TYPE envoy_kong_http_requests_total counter",
            'envoy_kong_http_requests_total{service="obs",route="r",code="200",source="via_upstream",workspace="default"} 2',
            'envoy_kong_http_requests_total{service="obs",route="r",code="404",source="direct_response",workspace="default"} 1',
            'envoy_kong_http_requests_total{service="-",route="x",code="503",source="upstream_reset_before_response_started{connection_failure}",workspace="default"} 1',
            "# TYPE envoy_cluster_upstream_rq counter",
            'envoy_cluster_upstream_rq{envoy_cluster_name="kong:x"} 9',
            "# TYPE envoy_kong_request_latency_ms histogram",
            'envoy_kong_request_latency_ms_bucket{service="obs",route="r",workspace="default",le="5"} 2',
            'envoy_kong_request_latency_ms_count{service="obs",route="r",workspace="default"} 2',
        ]
    )  # fmt: skip
    text = kong_metrics(envoy)
    assert "# TYPE kong_http_requests_total counter" in text
    assert (
        'kong_http_requests_total{service="obs",route="r",code="200",source="service",workspace="default"} 2'
        in text
    )
    assert (
        'kong_http_requests_total{service="obs",route="r",code="404",source="exit",workspace="default"} 1'
        in text
    )
    assert (
        'kong_http_requests_total{service="",route="x",code="503",source="error",workspace="default"} 1'
        in text
    )
    assert 'kong_request_latency_ms_bucket{service="obs",route="r",workspace="default",le="5"} 2' in text
    assert "# TYPE kong_request_latency_ms histogram" in text and "cluster" not in text


def test_serializer_from_a_grpc_entry() -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.data.accesslog.v3 import accesslog_pb2

    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.downstream_remote_address.socket_address.address = "10.0.0.7"
    entry.common_properties.start_time.FromMilliseconds(1_700_000_000_123)
    entry.common_properties.duration.FromMilliseconds(12)
    entry.common_properties.time_to_first_upstream_tx_byte.FromMilliseconds(2)
    entry.common_properties.time_to_last_upstream_rx_byte.FromMilliseconds(10)
    entry.common_properties.custom_tags.update({"route_name": "r", "route_id": "rid", "service_name": "-", "workspace": "default"})  # fmt: skip
    entry.request.request_method = base_pb2.RequestMethod.Value("POST")
    entry.request.scheme, entry.request.authority = "http", "api.example"
    entry.request.path, entry.request.original_path = "/up/x", "/r/x"
    entry.request.request_body_bytes = 5
    entry.request.request_headers.update({"user-agent": "t", "x-consumer-id": "c1"})
    entry.response.response_code.value = 201
    entry.response.response_body_bytes = 7
    entry.response.response_code_details = "via_upstream"
    out = kong_log.serialize(entry)
    assert out["request"] | {"headers": None} == {"method": "POST", "uri": "/r/x", "url": "http://api.example/r/x", "size": 5, "headers": None}  # fmt: skip
    assert (
        out["request"]["headers"]["user-agent"] == "t" and out["request"]["headers"]["host"] == "api.example"
    )
    assert (
        out["upstream_uri"] == "/up/x" and out["response"]["status"] == 201 and out["response"]["size"] == 7
    )
    assert out["latencies"] == {"request": 12, "kong": 2, "proxy": 8, "receive": 0}
    assert out["route"] == {"id": "rid", "name": "r"} and out["service"] == {"id": None, "name": None}
    assert out["consumer"]["id"] == "c1" and out["client_ip"] == "10.0.0.7"
    assert out["started_at"] == 1_700_000_000_123 and out["workspace_name"] == "default"
