"""End to end: MeshAccessLog and MeshTrace selecting a gateway proxy apply to its Kong routes (issue 10).

A gateway (``dp run --proxy-type gateway``) routes ``/shop`` to the mesh service ``backend`` (Kong Service host
``backend.mesh``) and ``/direct`` straight to the backend app (outside the mesh). A MeshAccessLog selecting the
gateway's service with a File backend (``to: Mesh``, JSON) logs each request with the gateway as source and the
route's destination (the leg's service, ``*`` outside the mesh); a MeshTrace selecting it traces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import MTLS_MESH, App, ControlPlane, Sidecar, wait_for
from tests.e2e.test_gateway_mesh import Gateway, sidecar_dataplane
from tests.e2e.test_observability import Zipkin

pytestmark = pytest.mark.e2e

MESH = MTLS_MESH


def policies(log: Path, zipkin_port: int) -> str:
    return f"""type: MeshAccessLog
mesh: default
name: edge-log
spec:
  targetRef: {{kind: MeshSubset, tags: {{kuma.io/service: edge}}}}
  to:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: File
        file:
          path: {log}
          format:
            type: Json
            json:
            - {{key: source, value: "%KUMA_SOURCE_SERVICE%"}}
            - {{key: destination, value: "%KUMA_DESTINATION_SERVICE%"}}
            - {{key: path, value: "%REQ(:PATH)%"}}
---
type: MeshTrace
mesh: default
name: edge-trace
spec:
  targetRef: {{kind: Mesh, proxyTypes: [Gateway]}}
  default:
    backends:
    - type: Zipkin
      zipkin: {{url: 'http://127.0.0.1:{zipkin_port}/api/v2/spans'}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("gateway-mesh-observability")
    log = tmp / "edge-access.log"
    zipkin = Zipkin()
    cp = ControlPlane(tmp).start()
    items: list[Any] = []
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    try:
        cp.apply(MESH)
        cp.apply(policies(log, zipkin.port))
        app = App(tmp, "backend", instance="backend-1").start()
        items.append(app)
        items.append(Sidecar(tmp, cp, sidecar_dataplane("backend-1", "backend", app.port)).start())
        edge = Gateway(tmp, cp, "edge-1", "edge").start()
        items.append(edge)
        for name, url, path in (
            ("shop", "http://backend.mesh/", "/shop"),
            ("direct", f"http://127.0.0.1:{app.port}/", "/direct"),
        ):
            assert kong.put(f"/services/{name}", json={"url": url}).status_code in (200, 201)
            route = kong.put(f"/services/{name}/routes/{name}", json={"paths": [path]})
            assert route.status_code in (200, 201), route.text

        def through() -> bool:
            try:
                return all(edge.http.get(f"/{p}/warmup").status_code == 200 for p in ("shop", "direct"))
            except httpx.HTTPError:
                return False

        wait_for(through, 60, what="gateway -> backend, in the mesh and directly")
        wait_for(lambda: log.exists() and log.read_text().strip(), 30, what="the gateway's access log")
        yield {"edge": edge, "log": log, "zipkin": zipkin}
    finally:
        kong.close()
        for item in reversed(items):
            item.stop()
        cp.stop()
        zipkin.stop()


def _lines(log: Path, marker: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if marker in str(e.get("path"))]


def test_the_gateway_logs_each_route_with_its_destination(setup: dict[str, Any]) -> None:
    edge: Gateway = setup["edge"]
    log: Path = setup["log"]
    for i in range(5):
        assert edge.http.get(f"/shop/shop-logged-{i}").status_code == 200
    for i in range(3):
        assert edge.http.get(f"/direct/direct-logged-{i}").status_code == 200
    wait_for(lambda: len(_lines(log, "-logged-")) == 8, 30, what="eight access log lines")
    # the path the upstream gets (Kong's strip_path removed the route's prefix)
    shop = _lines(log, "/shop-logged-")
    direct = _lines(log, "/direct-logged-")
    assert sorted(e["path"] for e in shop) == [f"/shop-logged-{i}" for i in range(5)]
    assert {(e["source"], e["destination"]) for e in shop} == {("edge", "backend")}
    assert sorted(e["path"] for e in direct) == [f"/direct-logged-{i}" for i in range(3)]
    assert {(e["source"], e["destination"]) for e in direct} == {("edge", "*")}


def test_the_gateway_traces_its_routes(setup: dict[str, Any]) -> None:
    edge: Gateway = setup["edge"]
    zipkin: Zipkin = setup["zipkin"]
    assert edge.http.get("/shop/gateway-traced").status_code == 200

    def gateway_span() -> list[dict[str, Any]]:
        # http.url: the upstream's URL (Kong's strip_path and host)
        return [s for s in zipkin.spans if s.get("tags", {}).get("http.url", "").endswith("/gateway-traced")
                and s["localEndpoint"]["serviceName"] == "edge"]  # fmt: skip

    spans = wait_for(gateway_span, 30, what="the gateway's span at the Zipkin receiver")
    assert spans[0]["kind"] == "SERVER" and spans[0]["tags"]["upstream_cluster"] == "backend"
