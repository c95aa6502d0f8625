"""MeshAccessLog, MeshTrace and MeshMetric: schema errors, the Envoy configuration they translate to (accepted by
``envoy --mode validate``), and the agent's metrics pipeline (filtering, labels) on real text."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.dp import metrics as dp_metrics
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.translate import translate, translate_packed
from tests.golden.test_golden import _envoy_validate

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "src" / "isthmus" / "policies"
CERTS = ROOT / "tests" / "golden" / "certs"
REG = default_registry()


def _xds(case: str, dp: str) -> dict[str, list[dict[str, Any]]]:
    resources = [parse_document(d, REG) for d in load_documents((POLICIES / case).read_text())]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    policies = [r for r in resources if r.type.is_policy]
    mtls = mesh.spec.enabled_backend is not None  # type: ignore[attr-defined]
    ctx = build_mesh_context(mesh, dps, policies, (CERTS / "ca.pem").read_text() if mtls else "")
    identity = Identity((CERTS / "cert.pem").read_text(), (CERTS / "key.pem").read_text()) if mtls else None
    ir = build_proxy_ir(ctx, dp, identity)
    messages = translate(ir)
    packed = translate_packed(ir)
    assert {t: len(v) for t, v in messages.items()} == {t: len(v) for t, v in packed.items()}
    out = {
        t: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs]
        for t, msgs in messages.items()
    }
    plain: dict[str, list[dict[str, Any]]] = json.loads(json.dumps(out))
    return plain


def _listener(xds: dict[str, list[dict[str, Any]]], prefix: str) -> dict[str, Any]:
    return next(lst for lst in xds[types.LISTENER] if lst["name"].startswith(prefix))


def _first_filter(listener: dict[str, Any]) -> dict[str, Any]:
    return listener["filter_chains"][0]["filters"][-1]["typed_config"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("case", "dp"),
    [
        ("meshaccesslog/testdata/backends.input.yaml", "web-1"),
        ("meshaccesslog/testdata/backends.input.yaml", "db-1"),
        ("meshtrace/testdata/backends.input.yaml", "web-1"),
        ("meshtrace/testdata/backends.input.yaml", "backend-1"),
        ("meshmetric/testdata/prometheus.input.yaml", "backend-1"),
    ],
)
def test_envoy_accepts(case: str, dp: str, tmp_path: Path) -> None:
    _envoy_validate(_xds(case, dp), tmp_path)


def test_access_logs_in_envoy() -> None:
    xds = _xds("meshaccesslog/testdata/backends.input.yaml", "web-1")
    outbound = _first_filter(_listener(xds, "outbound:127.0.0.1:10001"))
    logs = outbound["access_log"]
    assert [log["name"] for log in logs] == ["envoy.access_loggers.file", "envoy.access_loggers.file"]
    file_log, tcp_log = (log["typed_config"] for log in logs)
    assert file_log["path"] == "/tmp/isthmus-test-outbound.log"
    assert (
        file_log["log_format"]["text_format_source"]["inline_string"]
        == "web -> backend OUTBOUND %RESPONSE_CODE%\n"
    )
    assert tcp_log["path"] == "/tmp/isthmus-al-default-web-1.fifo"
    assert tcp_log["log_format"]["json_format"] == {
        "isthmus.tcp.address": "127.0.0.1:5000",
        "mesh": "default",
        "source": "127.0.0.1",
    }
    assert tcp_log["log_format"]["omit_empty_values"] is True
    # the db outbound (TCP): the MeshService item replaced the backends, Kuma's default TCP format
    db = _first_filter(_listener(xds, "outbound:127.0.0.1:10002"))
    (db_log,) = db["access_log"]
    text = db_log["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert "default 127.0.0.1(web)->%UPSTREAM_HOST%(db) took %DURATION%ms" in text
    inbound = _first_filter(_listener(xds, "inbound:127.0.0.1:20001"))
    otel = inbound["access_log"][0]
    assert otel["name"] == "envoy.access_loggers.open_telemetry"
    assert otel["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        "meshaccesslog:opentelemetry:otel-collector:4317"
    )
    assert {"key": "direction", "value": {"string_value": "INBOUND"}} in otel["typed_config"]["attributes"][
        "values"
    ]
    cluster = next(c for c in xds[types.CLUSTER] if c["name"].startswith("meshaccesslog:"))
    assert cluster["type"] == "STRICT_DNS"


def test_tracing_in_envoy() -> None:
    web = _xds("meshtrace/testdata/backends.input.yaml", "web-1")
    tracing = _first_filter(_listener(web, "outbound:127.0.0.1:10001"))["tracing"]
    assert tracing["provider"]["name"] == "envoy.tracers.zipkin"
    zipkin = tracing["provider"]["typed_config"]
    assert zipkin["collector_cluster"] == "meshtrace:zipkin:zipkin.local:9411"
    assert zipkin["collector_endpoint"] == "/api/v2/spans"
    assert zipkin["trace_id_128bit"] is True
    assert (tracing["overall_sampling"], tracing["client_sampling"], tracing["random_sampling"]) == (
        {"value": 80.0},
        {"value": 50.5},
        {"value": 10.0},
    )
    assert tracing["custom_tags"] == [
        {"tag": "team", "literal": {"value": "core"}},
        {"tag": "env", "request_header": {"name": "x-env", "default_value": "prod"}},
    ]
    assert "tracing" in _first_filter(_listener(web, "inbound:127.0.0.1:20001"))
    assert "tracing" not in _first_filter(_listener(web, "outbound:127.0.0.1:10002"))  # TCP
    backend = _xds("meshtrace/testdata/backends.input.yaml", "backend-1")
    otel = _first_filter(_listener(backend, "inbound:"))["tracing"]["provider"]
    assert otel["name"] == "envoy.tracers.opentelemetry"
    assert otel["typed_config"]["service_name"] == "backend"
    cluster = next(c for c in backend[types.CLUSTER] if c["name"].startswith("meshtrace:"))
    assert cluster["type"] == "STATIC"
    assert "http2_protocol_options" in json.dumps(cluster)


def test_metrics_dynconf_listener() -> None:
    xds = _xds("meshmetric/testdata/prometheus.input.yaml", "backend-1")
    listener = _listener(xds, "_isthmus:dynamicconfig")
    assert listener["address"] == {"pipe": {"path": "@isthmus-dynconf-default.backend-1"}}
    route = _first_filter(listener)["route_config"]["virtual_hosts"][0]["routes"][0]
    conf = json.loads(route["direct_response"]["body"]["inline_string"])
    assert conf["labels"] == {"mesh": "default", "service": "backend", "zone": "", "instance": "backend-1"}
    assert conf["backends"] == [
        {"type": "Prometheus", "address": "127.0.0.3", "port": 5671, "path": "/stats", "clientId": ""}
    ]
    assert conf["applications"] == [
        {"name": "app", "address": "127.0.0.1", "port": 8888, "path": "/metrics/prometheus"}
    ]
    assert conf["sidecar"]["includeUnused"] is True
    web = _xds("meshmetric/testdata/prometheus.input.yaml", "web-1")
    web_conf = json.loads(
        _first_filter(_listener(web, "_isthmus:dynamicconfig"))["route_config"]["virtual_hosts"][0]["routes"][
            0
        ]["direct_response"]["body"]["inline_string"]
    )
    assert web_conf["backends"][0]["port"] == 5670 and web_conf["backends"][0]["path"] == "/metrics"
    assert web_conf["labels"]["zone"] == "east"
    assert web_conf["sidecar"]["profiles"] == ["Basic"]


# -- schema errors -------------------------------------------------------------------------------------------------
def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as info:
        parse_document(doc, REG)
    return [(e.field, e.reason) for e in info.value.errors]


def _policy(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "mesh": "default", "name": "p", "spec": spec}


@pytest.mark.parametrize(
    ("kind", "spec", "field", "reason"),
    [
        (
            "MeshAccessLog",
            {"rules": [{"default": {"backends": [{"type": "File"}]}}]},
            "spec.rules[0].default.backends[0].file",
            "must be set with type File",
        ),
        (
            "MeshAccessLog",
            {"rules": [{"default": {"backends": [{"type": "Tcp", "tcp": {"address": "nohost"}}]}}]},
            "spec.rules[0].default.backends[0].tcp.address",
            "'nohost' is not host:port",
        ),
        (
            "MeshAccessLog",
            {
                "to": [
                    {
                        "targetRef": {"kind": "Mesh"},
                        "default": {
                            "backends": [{"type": "File", "file": {"path": "/x", "format": {"type": "Json"}}}]
                        },
                    }
                ]
            },
            "spec.to[0].default.backends[0].file.format.json",
            "must have at least one item with type Json",
        ),
        (
            "MeshAccessLog",
            {"rules": [{"default": {"backends": [{"type": "File", "file": {"path": "relative.log"}}]}}]},
            "spec.rules[0].default.backends[0].file.path",
            "must be an absolute path",
        ),
        (
            "MeshTrace",
            {"default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "ftp://x"}}]}},
            "spec.default.backends[0].zipkin.url",
            "'ftp://x' is not an http:// URL",
        ),
        (
            "MeshTrace",
            {"default": {"sampling": {"overall": 101}}},
            "spec.default.sampling.overall",
            "must be a number between 0 and 100",
        ),
        (
            "MeshTrace",
            {"default": {"tags": [{"name": "t"}]}},
            "spec.default.tags[0]",
            "exactly one of literal and header must be set",
        ),
        (
            "MeshTrace",
            {"default": {"backends": [{"type": "Datadog", "datadog": {"url": "http://x:8126"}}]}},
            "spec.default.backends[0].type",
            "Datadog is not supported yet (use Zipkin or OpenTelemetry)",
        ),
        (
            "MeshMetric",
            {"default": {"backends": [{"type": "Prometheus", "prometheus": {"port": 70000}}]}},
            "spec.default.backends[0].prometheus.port",
            "Input should be less than or equal to 65535",
        ),
        (
            "MeshMetric",
            {"default": {"sidecar": {"profiles": {"include": [{"type": "Regex", "match": "("}]}}}},
            "spec.default.sidecar.profiles.include[0].match",
            None,
        ),
    ],
)
def test_schema_errors(kind: str, spec: dict[str, Any], field: str, reason: str | None) -> None:
    errors = _errors(_policy(kind, spec))
    assert errors[0][0] == field, errors
    if reason is not None:
        assert errors[0][1] == reason


# -- the agent's metrics pipeline ----------------------------------------------------------------------------------
ENVOY_TEXT = """\
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 7
# TYPE envoy_cluster_upstream_cx_active gauge
envoy_cluster_upstream_cx_active{envoy_cluster_name="backend"} 1
# TYPE envoy_server_live gauge
envoy_server_live 1
# TYPE envoy_listener_admin_downstream_cx_total counter
envoy_listener_admin_downstream_cx_total 3
"""


def _conf(**sidecar: Any) -> dp_metrics.MetricsConf:
    base = {"profiles": ["All"], "include": [], "exclude": [], "includeUnused": False}
    doc = {
        "labels": {"mesh": "default", "service": "web", "zone": "", "instance": "web-1"},
        "sidecar": {**base, **sidecar},
        "applications": [],
        "backends": [
            {"type": "Prometheus", "address": "127.0.0.1", "port": 5670, "path": "/metrics", "clientId": ""}
        ],
    }
    return dp_metrics.MetricsConf.parse(json.dumps(doc))


def test_filter_and_label() -> None:
    conf = _conf(
        exclude=[{"type": "Prefix", "match": "envoy_cluster_"}],
        include=[{"type": "Contains", "match": "upstream_rq"}],
    )
    out = dp_metrics.relabel(dp_metrics.filter_families(ENVOY_TEXT, conf), conf.labels)
    assert (
        'envoy_cluster_upstream_rq_total{mesh="default",service="web",instance="web-1",envoy_cluster_name="backend"} 7'
        in out
    )
    assert "envoy_cluster_upstream_cx_active" not in out  # excluded, include wins for upstream_rq only
    assert 'envoy_server_live{mesh="default",service="web",instance="web-1"} 1' in out
    assert "# TYPE envoy_server_live gauge" in out


def test_profiles() -> None:
    none = _conf(profiles=["None"])
    assert dp_metrics.filter_families(ENVOY_TEXT, none).strip() == ""
    basic = _conf(profiles=["Basic"])
    kept = dp_metrics.filter_families(ENVOY_TEXT, basic)
    assert "envoy_cluster_upstream_rq_total" in kept
    assert "envoy_listener_admin_downstream_cx_total" not in kept  # the admin listener is not in Basic


def test_application_labels_kept() -> None:
    conf = _conf()
    text = '# TYPE app_requests counter\napp_requests{service="own"} 2\napp_up 1\n'
    out = dp_metrics.relabel(text, conf.labels)
    assert 'app_requests{mesh="default",instance="web-1",service="own"} 2' in out  # the app's own label wins
    assert 'app_up{mesh="default",service="web",instance="web-1"} 1' in out


def test_destination_service_label_from_the_cluster() -> None:
    web = _xds("meshmetric/testdata/prometheus.input.yaml", "web-1")
    route = _first_filter(_listener(web, "_isthmus:dynamicconfig"))["route_config"]["virtual_hosts"][0][
        "routes"
    ][0]
    conf = dp_metrics.MetricsConf.parse(route["direct_response"]["body"]["inline_string"])
    assert ("backend", "backend") in conf.clusters  # web's outbound cluster leads to the backend service
    out = dp_metrics.relabel(ENVOY_TEXT, conf.labels, conf.clusters)
    assert 'envoy_cluster_upstream_rq_total{instance="web-1",mesh="default",service="web",zone="east",destination_service="backend",envoy_cluster_name="backend"} 7' in out  # fmt: skip
    assert 'envoy_server_live{instance="web-1",mesh="default",service="web",zone="east"} 1' in out
    # a cluster the control plane did not name (the local application's, a collector's) gets no such label
    other = dp_metrics.relabel('x_total{envoy_cluster_name="localhost:8080"} 1\n', (), conf.clusters)
    assert other == 'x_total{envoy_cluster_name="localhost:8080"} 1\n'


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_tcp_log_fifo_belongs_to_envoys_user(tmp_path: Path) -> None:
    """With --transparent-proxy Envoy runs as its own user: the 0600 FIFO must be that user's to open."""
    forwarder = dp_metrics.LogForwarder(str(tmp_path / "al.fifo"), owner=(5678, 5679))
    forwarder.open()
    try:
        st = os.stat(forwarder.path)
        assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, st.st_gid) == (5678, 5679)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        os.close(forwarder.fd)
        forwarder.remove()
