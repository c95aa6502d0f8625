"""End to end: one trace across gateway -> service -> service (issue 10).

A gateway (``dp run --proxy-type gateway``) with Kong's zipkin plugin routes ``/shop`` to the mesh service ``web``
(the Kong Service's host ``web.mesh``); web's app calls ``backend`` through web's outbound, forwarding the B3
headers (``isthmus demo app --upstream``). A MeshTrace with a Zipkin backend traces the sidecars. The test runs
the Zipkin receiver: the gateway's span, web's server and client spans and backend's server span share one
trace id, each named after its proxy's service, with the plugin's and the policy's tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import MTLS_MESH, App, ControlPlane, Sidecar, wait_for
from tests.e2e.test_gateway_mesh import Gateway, sidecar_dataplane
from tests.e2e.test_observability import Zipkin

pytestmark = pytest.mark.e2e

MESH = MTLS_MESH


def mesh_trace(zipkin_port: int) -> str:
    return f"""type: MeshTrace
mesh: default
name: services
spec:
  targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}
  default:
    backends:
    - type: Zipkin
      zipkin: {{url: 'http://127.0.0.1:{zipkin_port}/api/v2/spans', traceId128bit: true}}
    tags:
    - {{name: team, literal: shop}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("trace-gateway")
    zipkin = Zipkin()
    cp = ControlPlane(tmp).start()
    items: list[Any] = []
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    try:
        cp.apply(MESH)
        cp.apply(mesh_trace(zipkin.port))
        backend_app = App(tmp, "backend", instance="backend-1").start()
        items.append(backend_app)
        items.append(Sidecar(tmp, cp, sidecar_dataplane("backend-1", "backend", backend_app.port)).start())
        outbound = free_port()
        web_app = App(tmp, "web", instance="web-1", upstream=f"http://127.0.0.1:{outbound}").start()
        items.append(web_app)
        web_dp = sidecar_dataplane("web-1", "web", web_app.port, {"backend": outbound})
        items.append(Sidecar(tmp, cp, web_dp).start())
        edge = Gateway(tmp, cp, "edge-1", "edge").start()
        items.append(edge)
        available = kong.get("/").json().get("plugins", {}).get("available_on_server", {})
        if "zipkin" not in available:
            pytest.skip("the gateway's zipkin plugin is not on this build")
        assert kong.put("/services/web", json={"url": "http://web.mesh/"}).status_code in (200, 201)
        route = kong.put("/services/web/routes/shop", json={"paths": ["/shop"]})
        assert route.status_code in (200, 201), route.text
        plugin = {
            "name": "zipkin",
            "config": {
                "http_endpoint": f"http://127.0.0.1:{zipkin.port}/api/v2/spans",
                "sample_ratio": 1,
                "static_tags": [{"name": "edge", "value": "eu"}],
            },
        }
        created = kong.post("/plugins", json=plugin)
        assert created.status_code == 201, created.text

        def through() -> bool:
            try:
                return edge.http.get("/shop/warmup").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(through, 60, what="gateway -> web -> backend")
        yield {"zipkin": zipkin, "edge": edge}
    finally:
        kong.close()
        for item in reversed(items):
            item.stop()
        cp.stop()
        zipkin.stop()


def test_one_trace_across_gateway_and_two_services(setup: dict[str, Any]) -> None:
    edge: Gateway = setup["edge"]
    zipkin: Zipkin = setup["zipkin"]
    resp = edge.http.get("/shop/checkout")
    assert resp.status_code == 200, resp.text

    def spans_of_one_trace() -> list[dict[str, Any]]:
        traced = [s for s in zipkin.spans if "/checkout" in s.get("tags", {}).get("http.url", "")]
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for span in traced:
            by_trace.setdefault(span["traceId"], []).append(span)
        # the gateway (SERVER), web inbound (SERVER), web outbound (CLIENT), backend inbound (SERVER)
        return next((spans for spans in by_trace.values() if len(spans) >= 4), [])

    spans = wait_for(spans_of_one_trace, 30, what="four spans of one trace at the Zipkin receiver")
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_service.setdefault(span["localEndpoint"]["serviceName"], []).append(span)
    assert sorted(by_service) == ["backend", "edge", "web"]
    assert len(by_service["web"]) == 2 and len(by_service["backend"]) == 1
    assert {s.get("kind") for s in by_service["web"]} == {"SERVER", "CLIENT"}
    assert by_service["backend"][0].get("kind") == "SERVER"
    assert all(s["tags"].get("edge") == "eu" for s in by_service["edge"])  # the plugin's static tag
    for service in ("web", "backend"):
        assert all(s["tags"]["team"] == "shop" for s in by_service[service])  # the policy's tag
    # one tree: every span but the gateway's is the child of another span of the trace or shares its id (Zipkin's
    # shared span context: a server span takes its caller's client span id)
    for span in by_service["web"] + by_service["backend"]:
        others = [o for o in spans if o is not span]
        assert any(span.get("parentId") == o["id"] or span["id"] == o["id"] for o in others), (span, spans)
