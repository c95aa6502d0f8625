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


def _http_receiver(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
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
