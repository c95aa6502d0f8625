"""Kong's logging, metrics and tracing plugins end to end: a real control plane, a real gateway Envoy, and the
receivers a Kong user would run (a file, a TCP line receiver, an HTTP log endpoint, a Zipkin collector)."""

from __future__ import annotations

import json
import re
import secrets
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json

pytestmark = pytest.mark.e2e
N = 3


class Received:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.items)


def _tcp_receiver(received: Received) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                received.add(json.loads(line))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, chunked (as Envoy sends spans) or with a content-length."""
    if handler.headers.get("transfer-encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("content-length") or 0))
    body = b""
    while size := int(handler.rfile.readline().split(b";")[0], 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return body


def _http_receiver(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = _body(self)
            received.add((self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(202 if self.path.startswith("/api/v2/spans") else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, httpx.Client, App, Path]]:
    tmp = tmp_path_factory.mktemp("gateway-observability")
    cp = ControlPlane(tmp).start()
    app = App(tmp, "obs").start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    try:
        cp.apply(MESH)
        yield cp, kong, app, tmp
    finally:
        kong.close()
        app.stop()
        cp.stop()


def _check_entry(entry: dict[str, Any], route: str) -> None:
    assert entry["request"]["method"] == "GET"
    assert entry["request"]["uri"].startswith(f"/{route}")
    assert entry["request"]["url"].startswith("http://127.0.0.1:")
    assert entry["request"]["headers"]["user-agent"] == "observability-test"
    assert entry["response"]["status"] == 200 and entry["response"]["size"] > 0
    assert isinstance(entry["latencies"]["request"], int)
    assert entry["route"]["name"] == route and entry["service"]["name"] == "obs"
    assert entry["workspace_name"] == "default" and entry["client_ip"] == "127.0.0.1"


def test_logs_metrics_and_traces(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, app, tmp = setup
    tcp_received, http_received = Received(), Received()
    tcp = _tcp_receiver(tcp_received)
    http = _http_receiver(http_received)
    log_file = tmp / "kong-file.log"
    status_port = free_port()
    try:
        _created(kong.put("/services/obs", json={"url": f"http://127.0.0.1:{app.port}"}))
        _created(kong.put("/services/obs/routes/logged", json={"paths": ["/logged"]}))
        _created(kong.put("/services/obs/routes/traced", json={"paths": ["/traced"]}))
        # a config Isthmus cannot honour is refused, naming the field
        bad = kong.post("/routes/logged/plugins", json={"name": "file-log", "config": {"path": str(log_file), "custom_fields_by_lua": {"x": "return 1"}}})  # fmt: skip
        assert bad.status_code == 400
        assert bad.json()["fields"] == {"config": {"custom_fields_by_lua": "custom_fields_by_lua is not supported yet"}}  # fmt: skip
        for body in (
            {"name": "file-log", "config": {"path": str(log_file)}},
            {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": tcp.server_address[1]}},
            {"name": "http-log", "config": {"http_endpoint": f"http://127.0.0.1:{http.server_address[1]}/logs",
                                            "headers": {"x-log-token": "t0k"}, "queue": {"max_batch_size": N}}},
        ):  # fmt: skip
            _created(kong.post("/routes/logged/plugins", json=body))
        metrics = {"status_code_metrics": True, "latency_metrics": True, "bandwidth_metrics": True}
        _created(kong.post("/plugins", json={"name": "prometheus", "config": metrics}))
        zipkin = {
            "http_endpoint": f"http://127.0.0.1:{http.server_address[1]}/api/v2/spans",
            "sample_ratio": 0,
        }
        _created(kong.post("/routes/traced/plugins", json={"name": "zipkin", "config": zipkin}))

        gw = Gateway(tmp, cp, "edge-observe")
        gw.proc.args += ["--status-listen", f"127.0.0.1:{status_port}"]
        gw.start()
        try:
            headers = {"user-agent": "observability-test"}
            wait_for(lambda: gw.get("/logged", headers=headers).status_code == 200, 60, what="the gateway")
            # the route may have answered before the plugins' listener update: start counting from a known state
            wait_for(lambda: log_file.exists() and log_file.read_text().strip() != "", 30, what="file-log")
            before_file = len(log_file.read_text().splitlines())
            wait_for(lambda: len(tcp_received.snapshot()) >= before_file, 30, what="tcp-log catching up")
            before_tcp = len(tcp_received.snapshot())

            def http_entries() -> list[dict[str, Any]]:
                return [e for _, _, body in http_received.snapshot() if isinstance(body, list) for e in body]

            wait_for(lambda: len(http_entries()) >= before_file, 30, what="http-log catching up")
            before_http = len(http_entries())
            for _ in range(N):
                assert gw.get("/logged", headers=headers).status_code == 200

            # file-log: one JSON line per request, Kong's serializer fields
            wait_for(lambda: len(log_file.read_text().splitlines()) == before_file + N, 30, what="file lines")
            for line in log_file.read_text().splitlines()[before_file:]:
                _check_entry(json.loads(line), "logged")
            # tcp-log: newline-delimited JSON at the receiver
            wait_for(lambda: len(tcp_received.snapshot()) == before_tcp + N, 30, what="tcp-log lines")
            for entry in tcp_received.snapshot()[before_tcp:]:
                _check_entry(entry, "logged")
            # http-log: batches (JSON arrays, max_batch_size > 1) POSTed with the configured header
            wait_for(lambda: len(http_entries()) == before_http + N, 30, what="http-log entries")
            for entry in http_entries()[before_http:]:
                _check_entry(entry, "logged")
            posts = [(p, h) for p, h, b in http_received.snapshot() if p == "/logs"]
            assert all(
                h.get("x-log-token") == "t0k" and h["content-type"] == "application/json" for _, h in posts
            )

            # prometheus: Kong's names and labels on the status endpoint
            def scrape() -> str:
                return httpx.get(f"http://127.0.0.1:{status_port}/metrics", timeout=5).text

            labels = 'service="obs",route="logged",code="200",source="service",workspace="default"'

            def requests_total() -> int:
                found = re.search(
                    r"^kong_http_requests_total\{" + re.escape(labels) + r"\} (\d+)$", scrape(), re.M
                )
                return int(found.group(1)) if found else -1

            wait_for(lambda: requests_total() >= before_file + N, 30, what="kong_http_requests_total")
            # every logged request counted once
            assert requests_total() == len(log_file.read_text().splitlines())
            wait_for(lambda: "kong_request_latency_ms_bucket{" in scrape(), 30, what="latency histograms")
            text = scrape()
            assert re.search(r'^kong_request_latency_ms_count\{service="obs",route="logged",workspace="default"\} \d+$', text, re.M)  # fmt: skip
            assert (
                'kong_request_latency_ms_bucket{service="obs",route="logged",workspace="default",le="75"}'
                in text
            )
            assert re.search(r'^kong_bandwidth_bytes\{service="obs",route="logged",direction="egress",workspace="default"\} [1-9]\d*$', text, re.M)  # fmt: skip
            assert "# TYPE kong_kong_latency_ms histogram" in text

            # zipkin: a client's B3 trace continues through the gateway to the upstream and to the collector
            trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
            b3 = {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1"}
            seen = _json(gw.get("/traced", headers=b3))["headers"]
            assert seen["x-b3-traceid"] == trace_id and seen["x-b3-parentspanid"] == span_id

            def spans() -> list[dict[str, Any]]:
                return [s for p, _, body in http_received.snapshot() if p == "/api/v2/spans" for s in body]

            wait_for(lambda: any(s["traceId"] == trace_id for s in spans()), 60, what="the span at Zipkin")
            span = next(s for s in spans() if s["traceId"] == trace_id)
            assert span["parentId"] == span_id and span["kind"] == "SERVER"
            assert span["tags"]["http.method"] == "GET" and span["tags"]["kong.route"]
            # a request without a sampling decision on a route sampling 0: no span
            plain = _json(gw.get("/traced"))["headers"]
            assert plain.get("x-b3-sampled") == "0"
        finally:
            gw.stop()
    finally:
        tcp.shutdown()
        http.shutdown()


def _otlp_receiver(received: Received) -> ThreadingHTTPServer:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = _body(self)
            request = trace_service_pb2.ExportTraceServiceRequest()  # type: ignore[attr-defined]
            request.ParseFromString(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                # OTLP's ScopeSpans; the bundled protos are older: InstrumentationLibrarySpans, the same field
                scopes = (
                    getattr(resource_spans, "scope_spans", None)
                    or resource_spans.instrumentation_library_spans
                )
                for scope in scopes:
                    for span in scope.spans:
                        received.add(
                            (self.path, headers, attributes, span.trace_id.hex(), span.parent_span_id.hex())
                        )
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _echo_server() -> ThreadingHTTPServer:
    """An upstream answering the request's headers as JSON (the demo app echoes only ``x-*`` ones)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_opentelemetry_w3c(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, _, tmp = setup
    received = Received()
    otlp = _otlp_receiver(received)
    echo = _echo_server()
    try:
        _created(kong.put("/services/otel", json={"url": f"http://127.0.0.1:{echo.server_address[1]}"}))
        _created(kong.put("/services/otel/routes/otel", json={"paths": ["/otel"]}))
        config = {
            "traces_endpoint": f"http://127.0.0.1:{otlp.server_address[1]}/v1/traces",
            "headers": {"x-otlp-token": "s3cret"},
            "resource_attributes": {"service.name": "edge", "team": "core"},
            "sampling_rate": 1,
        }
        body = {"name": "opentelemetry", "config": config}
        zipkins = [p["id"] for p in kong.get("/plugins").json()["data"] if p["name"] == "zipkin"]
        if (
            zipkins
        ):  # the gateway has one tracer: another collector beside zipkin is refused, naming the field
            refused = kong.post("/routes/otel/plugins", json=body)
            assert refused.status_code == 400 and "not supported yet" in refused.json()["fields"]["name"]
            for pid in zipkins:
                assert kong.delete(f"/plugins/{pid}").status_code == 204
        _created(kong.post("/routes/otel/plugins", json=body))
        gw = Gateway(tmp, cp, "edge-otel").start()
        try:
            wait_for(lambda: gw.get("/otel").status_code == 200, 60, what="the gateway")
            trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
            traceparent = f"00-{trace_id}-{parent}-01"
            seen = gw.get("/otel", headers={"traceparent": traceparent}).json()["headers"]
            # the trace continues to the upstream: same trace id, the gateway's span as the parent
            assert seen["traceparent"].startswith(f"00-{trace_id}-") and parent not in seen["traceparent"]
            wait_for(lambda: any(s[3] == trace_id for s in received.snapshot()), 60, what="the span at OTLP")
            path, headers, attributes, _, parent_id = next(s for s in received.snapshot() if s[3] == trace_id)
            assert path == "/v1/traces" and headers["x-otlp-token"] == "s3cret"
            assert attributes["service.name"] == "edge" and attributes["team"] == "core"
            assert parent_id == parent
        finally:
            gw.stop()
    finally:
        otlp.shutdown()
        echo.shutdown()


def test_consumer_in_logs_and_metrics(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    """The consumer key-auth identified is in the log entry and, with per_consumer, a metric label; a
    consumer-scoped file-log applies to that consumer's requests only."""
    cp, kong, app, tmp = setup
    everyone, dana_only = tmp / "who.log", tmp / "dana.log"
    status_port = free_port()
    _created(kong.put("/services/who", json={"url": f"http://127.0.0.1:{app.port}"}))
    _created(kong.put("/services/who/routes/who", json={"paths": ["/who"]}))
    dana = _created(kong.put("/consumers/dana", json={"custom_id": "d-1"}))
    _created(kong.post("/consumers/dana/key-auth", json={"key": "dana-key"}))
    _created(kong.put("/consumers/erin", json={}))
    _created(kong.post("/consumers/erin/key-auth", json={"key": "erin-key"}))
    for body in (
        {"name": "key-auth"},
        {"name": "file-log", "config": {"path": str(everyone)}},
        {"name": "prometheus", "config": {"status_code_metrics": True, "per_consumer": True}},
    ):
        _created(kong.post("/routes/who/plugins", json=body))
    _created(
        kong.post("/consumers/dana/plugins", json={"name": "file-log", "config": {"path": str(dana_only)}})
    )
    gw = Gateway(tmp, cp, "edge-who")
    gw.proc.args += ["--status-listen", f"127.0.0.1:{status_port}"]
    gw.start()
    try:
        wait_for(
            lambda: gw.get("/who", headers={"apikey": "dana-key"}).status_code == 200, 60, what="the gateway"
        )
        assert gw.get("/who", headers={"apikey": "erin-key"}).status_code == 200
        assert gw.get("/who").status_code == 401
        # dana's own file-log configuration wins for dana (Kong's precedence), the route's for the others
        wait_for(lambda: dana_only.exists() and everyone.exists(), 30, what="both files")
        wait_for(lambda: len(everyone.read_text().splitlines()) >= 2, 30, what="erin's and the 401's lines")
        dana_lines = [json.loads(line) for line in dana_only.read_text().splitlines()]
        assert dana_lines and all(e["consumer"]["username"] == "dana" for e in dana_lines)
        assert dana_lines[0]["consumer"] == {"id": dana["id"], "username": "dana", "custom_id": "d-1"}
        others = [json.loads(line) for line in everyone.read_text().splitlines()]
        assert {e["consumer"]["username"] for e in others} == {"erin", None}
        assert {e["response"]["status"] for e in others} == {200, 401}

        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{status_port}/metrics", timeout=5).text

        erin = 'kong_http_requests_total{service="who",route="who",code="200",source="service",workspace="default",consumer="erin"} 1'  # fmt: skip
        wait_for(lambda: erin in scrape(), 30, what="erin's request counted")
        assert 'code="401",source="exit",workspace="default",consumer=""}' in scrape()
    finally:
        gw.stop()


def _sample(text: str, name: str, labels: str) -> int | None:
    """The value of the sample ``name{labels}`` in a Prometheus text, or None."""
    found = re.search(r"^" + re.escape(f"{name}{{{labels}}}") + r" (\d+)$", text, re.M)
    return int(found.group(1)) if found else None


def test_upstream_health_and_node_metrics(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    """prometheus's upstream_health_metrics: a target failing its active health checks is ``unhealthy`` (1) and
    a live one ``healthy``; Kong's node-level metrics count the gateway's requests and connections."""
    cp, kong, app, tmp = setup
    dead = free_port()  # nothing listens there
    status_port = free_port()
    checks = {
        "active": {
            "http_path": "/",
            "timeout": 1,
            "healthy": {"interval": 1, "successes": 1},
            "unhealthy": {"interval": 1, "http_failures": 1, "tcp_failures": 1, "timeouts": 1},
        }
    }
    _created(kong.put("/upstreams/obs-up", json={"healthchecks": checks}))
    for target in (f"127.0.0.1:{app.port}", f"127.0.0.1:{dead}"):
        _created(kong.post("/upstreams/obs-up/targets", json={"target": target}))
    _created(kong.put("/services/health", json={"host": "obs-up", "protocol": "http"}))
    _created(kong.put("/services/health/routes/health", json={"paths": ["/health"]}))
    metrics = {"upstream_health_metrics": True, "status_code_metrics": True}
    _created(kong.post("/routes/health/plugins", json={"name": "prometheus", "config": metrics}))

    gw = Gateway(tmp, cp, "edge-health")
    gw.proc.args += ["--status-listen", f"127.0.0.1:{status_port}"]
    gw.start()
    try:
        wait_for(lambda: gw.get("/health").status_code == 200, 60, what="the gateway")

        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{status_port}/metrics", timeout=5).text

        def health(target: str, state: str) -> int | None:
            labels = (
                f'upstream="obs-up",target="{target}",address="{target}",state="{state}",subsystem="http"'
            )
            return _sample(scrape(), "kong_upstream_target_health", labels)

        wait_for(lambda: health(f"127.0.0.1:{dead}", "unhealthy") == 1, 60, what="the dead target unhealthy")
        text = scrape()
        dead_labels = f'upstream="obs-up",target="127.0.0.1:{dead}",address="127.0.0.1:{dead}"'
        for state in ("healthchecks_off", "healthy", "dns_error"):
            assert _sample(text, "kong_upstream_target_health", f'{dead_labels},state="{state}",subsystem="http"') == 0  # fmt: skip
        wait_for(lambda: health(f"127.0.0.1:{app.port}", "healthy") == 1, 60, what="the live target healthy")
        assert "# TYPE kong_upstream_target_health gauge" in scrape()
        # every request goes to the live target now
        assert all(gw.get("/health").status_code == 200 for _ in range(N))

        # Kong's node-level metrics
        node = _node_id(scrape())
        labels = f'node_id="{node}",subsystem="http"'
        before = _sample(scrape(), "kong_nginx_requests_total", labels)
        assert before is not None and before >= N + 1
        for _ in range(N):
            assert gw.get("/health").status_code == 200
        wait_for(
            lambda: (_sample(scrape(), "kong_nginx_requests_total", labels) or 0) >= before + N,
            30,
            what="kong_nginx_requests_total",
        )
        text = scrape()
        total = _sample(text, "kong_nginx_connections_total", f'{labels},state="total"')
        accepted = _sample(text, "kong_nginx_connections_total", f'{labels},state="accepted"')
        handled = _sample(text, "kong_nginx_connections_total", f'{labels},state="handled"')
        assert total is not None and total >= before + N
        assert accepted is not None and handled is not None and accepted >= handled >= 1
        assert _sample(text, "kong_nginx_connections_total", f'{labels},state="active"') is not None
        assert re.search(r"^kong_datastore_reachable 1$", text, re.M)
        assert _sample(text, "kong_node_info", f'node_id="{node}",version="3.10.0"') == 1
        assert re.search(r"^kong_nginx_metric_errors_total 0$", text, re.M)
    finally:
        gw.stop()
        for path in ("/routes/health", "/services/health"):
            kong.delete(path)


def _node_id(text: str) -> str:
    found = re.search(r'^kong_node_info\{node_id="([^"]*)",', text, re.M)
    assert found, text
    return found.group(1)
