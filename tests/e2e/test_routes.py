"""End to end: MeshHTTPRoute and MeshTCPRoute with a real control plane, real Envoy sidecars and real apps.

web-1 (client sidecar only) calls ``backend`` (backend-1: version v1, backend-2: version v2) or ``db`` (two TCP
echo servers, v1 and v2) through its outbound listener; the tests count which version answers.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, wait_for

pytestmark = pytest.mark.e2e

MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""

SPLIT = """
type: MeshHTTPRoute
mesh: default
name: backend-split
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
      default:
        filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: x-route, value: {marker}}}]}}
        backendRefs:
        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v1}}, weight: {v1}}}
        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v2}}, weight: {v2}}}
"""

TESTERS = """
type: MeshHTTPRoute
mesh: default
name: backend-testers
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-route, value: testers}]}
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}}]
    - matches: [{headers: [{type: Exact, name: x-user, value: tester}]}]
      default:
        filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-route, value: testers}]}
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
"""

TCP_SPLIT = """
type: MeshTCPRoute
mesh: default
name: db-split
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: db}}
    rules:
    - default:
        backendRefs:
        - {{kind: MeshServiceSubset, name: db, tags: {{version: v1}}, weight: {v1}}}
        - {{kind: MeshServiceSubset, name: db, tags: {{version: v2}}, weight: {v2}}}
"""


def dataplane(
    name: str, service: str, app_port: int, *, protocol: str = "http", version: str = "v1", outbound: str = ""
) -> str:
    out = ""
    if outbound:
        target, port = outbound.split(":")
        out = f"\n  - port: {port}\n    tags:\n      kuma.io/service: {target}"
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {app_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: {protocol}
      version: {version}
  outbound:{out or " []"}
"""


@dataclass
class Setup:
    cp: ControlPlane
    outbound: int
    parts: list[App | Sidecar]

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()
        self.cp.stop()


def start(tmp: Path, service: str, protocol: str) -> Setup:
    """A control plane, two instances of ``service`` (v1, v2) with sidecars, and web-1's sidecar calling it."""
    cp = ControlPlane(tmp).start()
    setup = Setup(cp, free_port(), [])
    try:
        cp.apply(MESH)
        tcp = protocol == "tcp"
        for version in ("v1", "v2"):
            app = App(tmp, service, version=version, instance=f"{service}-{version}", tcp=tcp).start()
            setup.parts.append(app)
            doc = dataplane(f"{service}-{version}", service, app.port, protocol=protocol, version=version)
            setup.parts.append(Sidecar(tmp, cp, doc).start())
        web = Sidecar(
            tmp, cp, dataplane("web-1", "web", free_port(), outbound=f"{service}:{setup.outbound}")
        ).start()
        setup.parts.append(web)
        web.wait_listener(f"outbound:127.0.0.1:{setup.outbound}")
    except BaseException:
        setup.stop()
        raise
    return setup


@pytest.fixture(scope="module")
def http_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    setup = start(tmp_path_factory.mktemp("routes-http"), "backend", "http")
    try:
        yield setup
    finally:
        setup.stop()


def _versions(client: httpx.Client, url: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        resp = client.get(url, headers=headers)
        assert resp.status_code == 200, resp.text
        counts[resp.json()["version"]] += 1
    return counts


def _route_active(client: httpx.Client, url: str, marker: str) -> bool:
    resp = client.get(url)
    return resp.status_code == 200 and resp.headers.get("x-route") == marker


def test_weighted_split_90_10(http_mesh: Setup) -> None:
    url = f"http://127.0.0.1:{http_mesh.outbound}/"
    http_mesh.cp.apply(SPLIT.format(marker="split-90-10", v1=90, v2=10))
    with httpx.Client(timeout=5) as client:
        wait_for(lambda: _route_active(client, url, "split-90-10"), 30, what="the 90/10 route")
        # both subsets have live endpoints before counting
        wait_for(lambda: set(_versions(client, url, 50)) == {"v1", "v2"}, 20, what="both versions")
        counts = _versions(client, url, 2000)
    share = counts["v1"] / 2000
    assert set(counts) == {"v1", "v2"}
    assert abs(share - 0.90) <= 0.02, counts
    http_mesh.cp.delete("/meshes/default/meshhttproutes/backend-split")


def test_header_match_sends_testers_to_v2(http_mesh: Setup) -> None:
    url = f"http://127.0.0.1:{http_mesh.outbound}/"
    http_mesh.cp.apply(TESTERS)
    tester = {"x-user": "tester"}
    with httpx.Client(timeout=5) as client:
        wait_for(lambda: _route_active(client, url, "testers"), 30, what="the testers route")
        wait_for(lambda: _versions(client, url, 1, tester) == {"v2": 1}, 20, what="v2 for testers")
        assert _versions(client, url, 200, tester) == {"v2": 200}
        assert _versions(client, url, 200) == {"v1": 200}
        assert _versions(client, url, 50, {"x-user": "someone-else"}) == {"v1": 50}
    http_mesh.cp.delete("/meshes/default/meshhttproutes/backend-testers")


def _banner(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"ping")
        data = s.recv(100)
    return data.decode().split(":", 1)[0]


def test_tcp_route_splits_connections(tmp_path: Path) -> None:
    setup = start(tmp_path, "db", "tcp")
    try:
        port = setup.outbound
        # first everything to v2: once every connection lands there, the route is in force
        setup.cp.apply(TCP_SPLIT.format(v1=0, v2=1))
        wait_for(lambda: all(_banner(port) == "db-v2" for _ in range(10)), 30, what="all connections to v2")
        setup.cp.apply(TCP_SPLIT.format(v1=70, v2=30))
        wait_for(lambda: "db-v1" in {_banner(port) for _ in range(20)}, 20, what="the 70/30 split")
        counts = Counter(_banner(port) for _ in range(200))
        assert set(counts) == {"db-v1", "db-v2"}, counts
        assert abs(counts["db-v1"] / 200 - 0.70) <= 0.10, counts
    finally:
        setup.stop()
