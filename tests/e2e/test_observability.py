"""End to end: MeshTrace, MeshAccessLog and MeshMetric with real Envoys.

web (client) -> backend (server), each with a sidecar, in a mesh with mTLS (web's inbound permissive, so the
test calls it in plaintext). The test runs the receivers: a Zipkin
collector (``POST /api/v2/spans``, JSON) and a TCP receiver of access-log lines; a file backend writes to the
test's directory; backend's agent serves Prometheus metrics on a free port.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, allow_all, running, wait_for

pytestmark = pytest.mark.e2e

REQUESTS = 5


class Zipkin:
    """A Zipkin collector: keeps every span POSTed to /api/v2/spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    body = b""
                    while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/api/v2/spans":
                    with lock:
                        spans.extend(json.loads(body))
                    self.send_response(202)
                else:
                    self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpReceiver:
    """Collects newline-separated lines sent to it over TCP."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn, conn.makefile("r") as lines:
            for line in lines:
                self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        self.sock.close()


def _dataplane(mesh: str, name: str, service: str, port: int, app_port: int, outbound: int = 0) -> str:
    outbounds = f"\n  - port: {outbound}\n    tags: {{kuma.io/service: backend}}" if outbound else " []"
    return f"""
type: Dataplane
mesh: {mesh}
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    servicePort: {app_port}
    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}
  outbound:{outbounds}
"""


def _policies(mesh: str, zipkin: int, tcp: int, log_file: Path, metrics_port: int) -> str:
    return (
        allow_all(mesh)
        + f"""---
type: MeshTLS
mesh: {mesh}
name: web-permissive
spec:
  targetRef: {{kind: MeshService, name: web}}
  from:
  - targetRef: {{kind: Mesh}}
    default: {{mode: Permissive}}
---
type: MeshTrace
mesh: {mesh}
name: trace
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
    - type: Zipkin
      zipkin: {{url: 'http://127.0.0.1:{zipkin}/api/v2/spans'}}
    tags:
    - {{name: team, literal: core}}
    - name: env
      header: {{name: x-env, default: prod}}
---
type: MeshAccessLog
mesh: {mesh}
name: outbound-file
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: File
        file:
          path: {log_file}
          format:
            type: Json
            json:
            - {{key: mesh, value: '%KUMA_MESH%'}}
            - {{key: source, value: '%KUMA_SOURCE_SERVICE%'}}
            - {{key: destination, value: '%KUMA_DESTINATION_SERVICE%'}}
            - {{key: direction, value: '%KUMA_TRAFFIC_DIRECTION%'}}
            - {{key: status, value: '%RESPONSE_CODE%'}}
            - {{key: path, value: '%REQ(:PATH)%'}}
---
type: MeshAccessLog
mesh: {mesh}
name: inbound-tcp
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - default:
      backends:
      - type: Tcp
        tcp:
          address: 127.0.0.1:{tcp}
          format:
            type: Plain
            plain: '%KUMA_MESH% %KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION% %REQ(:PATH)% %RESPONSE_CODE%'
---
type: MeshMetric
mesh: {mesh}
name: metrics
spec:
  targetRef: {{kind: MeshService, name: backend}}
  default:
    backends:
    - type: Prometheus
      prometheus: {{port: {metrics_port}, path: /metrics}}
"""
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("observability")
    mesh = f"obs-{uuid.uuid4().hex[:8]}"  # the agent's FIFO is named after mesh and proxy
    zipkin, tcp = Zipkin(), TcpReceiver()
    cp = ControlPlane(tmp)
    cp.start()
    cp.apply(
        f"type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - {{name: ca-1, type: builtin}}\n"
    )
    log_file = tmp / "outbound.log"
    metrics_port = free_port()
    cp.apply(_policies(mesh, zipkin.port, tcp.port, log_file, metrics_port))
    outbound = free_port()
    backend_app = App(tmp, "backend")
    web_app = App(tmp, "web", upstream=f"http://127.0.0.1:{outbound}")
    web_in, backend_in = free_port(), free_port()
    web = Sidecar(tmp, cp, _dataplane(mesh, "web-1", "web", web_in, web_app.port, outbound))
    backend = Sidecar(tmp, cp, _dataplane(mesh, "backend-1", "backend", backend_in, backend_app.port))
    with running(cp, backend_app, web_app, backend, web):
        backend_app.start()
        web_app.start()
        backend.start()
        web.start()
        web.wait_listener(f"outbound:127.0.0.1:{outbound}")
        backend.wait_listener(f"inbound:127.0.0.1:{backend_in}")

        def through() -> bool:
            resp = httpx.get(f"http://127.0.0.1:{outbound}/warmup", timeout=5)
            return resp.status_code == 200

        wait_for(through, 30, what="web -> backend through the sidecars")
        yield {
            "mesh": mesh,
            "zipkin": zipkin,
            "tcp": tcp,
            "log_file": log_file,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "web_in": web_in,
            "outbound": outbound,
            "web": web,
            "backend": backend,
        }
    zipkin.stop()
    tcp.stop()


def test_one_trace_across_both_sidecars(setup: dict[str, Any]) -> None:
    """A request into web's inbound, web's app calling backend through web's outbound: web's server and client
    spans and backend's server span share one trace id, with the policy's tags."""
    resp = httpx.get(f"http://127.0.0.1:{setup['web_in']}/traced", headers={"x-env": "staging"}, timeout=10)
    assert resp.status_code == 200, resp.text
    zipkin: Zipkin = setup["zipkin"]

    def spans_of_one_trace() -> list[dict[str, Any]]:
        traced = [s for s in zipkin.spans if s.get("tags", {}).get("http.url", "").endswith("/traced")]
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for span in traced:
            by_trace.setdefault(span["traceId"], []).append(span)
        # web inbound (SERVER), web outbound (CLIENT), backend inbound (SERVER)
        return next((spans for spans in by_trace.values() if len(spans) >= 3), [])

    spans = wait_for(spans_of_one_trace, 30, what="three spans of one trace at the Zipkin receiver")
    services = sorted(s["localEndpoint"]["serviceName"] for s in spans)
    assert services == ["backend", "web", "web"]
    kinds = sorted(s.get("kind", "") for s in spans)
    assert kinds.count("SERVER") >= 1 and "CLIENT" in kinds
    for span in spans:
        assert span["tags"]["team"] == "core"
    web_server = next(
        s for s in spans if s["localEndpoint"]["serviceName"] == "web" and s.get("kind") == "SERVER"
    )
    assert web_server["tags"]["env"] == "staging"  # the header's value; the default applies without it
    backend_span = next(s for s in spans if s["localEndpoint"]["serviceName"] == "backend")
    assert backend_span["tags"]["env"] == "prod"  # web's app does not forward x-env


def test_access_logs_in_file_and_at_tcp_receiver(setup: dict[str, Any]) -> None:
    for i in range(3):
        assert httpx.get(f"http://127.0.0.1:{setup['outbound']}/logged/{i}", timeout=10).status_code == 200
    log_file: Path = setup["log_file"]

    def file_lines() -> list[dict[str, Any]]:
        if not log_file.exists():
            return []
        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
        return [entry for entry in lines if str(entry.get("path", "")).startswith("/logged/")]

    wait_for(lambda: len(file_lines()) >= 3, 30, what="three lines in the file")
    entries = file_lines()
    assert {(e["mesh"], e["source"], e["destination"], e["direction"], e["status"]) for e in entries} == {
        (setup["mesh"], "web", "backend", "OUTBOUND", 200)
    }
    tcp: TcpReceiver = setup["tcp"]

    def tcp_lines() -> list[str]:
        return [line for line in tcp.lines if " /logged/" in line]

    wait_for(lambda: len(tcp_lines()) >= 3, 30, what="three lines at the TCP receiver")
    lines = tcp_lines()
    for i in range(3):
        assert f"{setup['mesh']} backend INBOUND /logged/{i} 200" in lines


def test_metrics_of_a_data_plane(setup: dict[str, Any]) -> None:
    def scrape() -> str:
        resp = httpx.get(setup["metrics"], timeout=5)
        return resp.text if resp.status_code == 200 else ""

    wait_for(scrape, 30, what="backend's agent serving metrics")

    def inbound_requests(text: str) -> float:
        total = 0.0
        pattern = re.compile(r"^envoy_http_downstream_rq_total\{([^}]*)\} (\S+)$")
        for line in text.splitlines():
            match = pattern.match(line)
            if match and 'envoy_http_conn_manager_prefix="inbound_' in match.group(1):
                labels = match.group(1)
                assert f'mesh="{setup["mesh"]}"' in labels
                assert 'service="backend"' in labels
                assert 'instance="backend-1"' in labels
                total += float(match.group(2))
        return total

    before = inbound_requests(scrape())
    for i in range(REQUESTS):
        assert httpx.get(f"http://127.0.0.1:{setup['outbound']}/counted/{i}", timeout=10).status_code == 200
    wait_for(lambda: inbound_requests(scrape()) >= before + REQUESTS, 30, what="counters up by the requests")
    assert inbound_requests(scrape()) == before + REQUESTS
    # the admin listener is not in the Basic profile
    assert "envoy_listener_admin_" not in scrape()
    # web has no MeshMetric: nothing serves on its behalf
    assert "envoy_server_live{" in scrape()
