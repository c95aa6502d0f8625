"""End to end: MeshMetric's ``route`` label with a real control plane, real Envoy sidecars and a real app.

web-1 (a client sidecar; the test calls its outbound listener) reaches ``backend`` (backend-1, the demo app)
through a MeshHTTPRoute with one rule for ``/api``; web's agent serves Prometheus metrics (MeshMetric). After a
known number of requests on each path, the agent's per-route counters, labelled ``route``, equal those numbers:
the rule's (``api-route_to_0_rules_0``) and the implicit default rule's (``default``, what no rule matched).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, allow_all, running, wait_for

pytestmark = pytest.mark.e2e

API_REQUESTS = 7
OTHER_REQUESTS = 3
API_ROUTE = "api-route_to_0_rules_0"


def _dataplane(mesh: str, name: str, service: str, app_port: int, outbound: int = 0) -> str:
    outbounds = f"\n  - port: {outbound}\n    tags: {{kuma.io/service: backend}}" if outbound else " []"
    return f"""
type: Dataplane
mesh: {mesh}
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {app_port}
    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}
  outbound:{outbounds}
"""


def _policies(mesh: str, metrics_port: int) -> str:
    return (
        allow_all(mesh)
        + f"""---
type: MeshHTTPRoute
mesh: {mesh}
name: api-route
spec:
  targetRef: {{kind: MeshService, name: web}}
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
      default:
        backendRefs: [{{kind: MeshService, name: backend}}]
---
type: MeshMetric
mesh: {mesh}
name: web-metrics
spec:
  targetRef: {{kind: MeshService, name: web}}
  default:
    backends:
    - type: Prometheus
      prometheus: {{port: {metrics_port}, path: /metrics}}
"""
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("meshmetric-routes")
    mesh = f"mmr-{uuid.uuid4().hex[:8]}"  # the agent's FIFO is named after mesh and proxy
    cp = ControlPlane(tmp)
    cp.start()
    cp.apply(
        f"type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - {{name: ca-1, type: builtin}}\n"
    )
    metrics_port = free_port()
    cp.apply(_policies(mesh, metrics_port))
    outbound = free_port()
    backend_app = App(tmp, "backend")
    web = Sidecar(tmp, cp, _dataplane(mesh, "web-1", "web", free_port(), outbound))
    backend = Sidecar(tmp, cp, _dataplane(mesh, "backend-1", "backend", backend_app.port))
    with running(cp, backend_app, backend, web):
        backend_app.start()
        backend.start()
        web.start()
        web.wait_listener(f"outbound:127.0.0.1:{outbound}")

        def routed() -> bool:  # the MeshHTTPRoute's route, with its stat_prefix, is in web's Envoy
            dump = httpx.get(f"{web.admin}/config_dump?resource=dynamic_route_configs", timeout=5).text
            return f'"stat_prefix": "{API_ROUTE}"' in dump

        wait_for(routed, 30, what="web's route config with the MeshHTTPRoute's stat_prefix")

        def through() -> bool:  # the default rule's path: the /api counter is untouched
            return httpx.get(f"http://127.0.0.1:{outbound}/warmup", timeout=5).status_code == 200

        wait_for(through, 30, what="web -> backend through the sidecars")
        yield {
            "mesh": mesh,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "outbound": outbound,
        }


def _route_totals(text: str) -> dict[str, tuple[float, str]]:
    """``route`` label -> (value, labels) of each ``envoy_vhost_route_upstream_rq_total`` sample."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^envoy_vhost_route_upstream_rq_total\{([^}]*)\} (\S+)$", line)
        if match:
            route = re.search(r'(?:^|,)route="([^"]*)"', match.group(1))
            assert route is not None, f"a per-route sample without a route label: {line}"
            out[route.group(1)] = (float(match.group(2)), match.group(1))
    return out


def test_per_route_counters_have_the_route_label(setup: dict[str, Any]) -> None:
    def scrape() -> str:
        try:
            resp = httpx.get(setup["metrics"], timeout=5)
        except httpx.HTTPError:
            return ""
        return resp.text if resp.status_code == 200 else ""

    wait_for(lambda: "default" in _route_totals(scrape()), 30, what="web's agent serving per-route metrics")
    before = _route_totals(scrape())
    assert API_ROUTE not in before  # no request took the /api rule yet
    default_before = before["default"][0]
    for i in range(API_REQUESTS):
        resp = httpx.get(f"http://127.0.0.1:{setup['outbound']}/api/items/{i}", timeout=10)
        assert resp.status_code == 200, resp.text
    for i in range(OTHER_REQUESTS):
        resp = httpx.get(f"http://127.0.0.1:{setup['outbound']}/other/{i}", timeout=10)
        assert resp.status_code == 200, resp.text

    def counted() -> bool:
        totals = _route_totals(scrape())
        return (
            totals.get(API_ROUTE, (0.0, ""))[0] >= API_REQUESTS
            and totals["default"][0] >= default_before + OTHER_REQUESTS
        )

    wait_for(counted, 30, what="the per-route counters up by the requests")
    totals = _route_totals(scrape())
    value, labels = totals[API_ROUTE]
    assert value == API_REQUESTS
    assert totals["default"][0] == default_before + OTHER_REQUESTS
    assert set(totals) == {API_ROUTE, "default"}
    for expected in (
        f'mesh="{setup["mesh"]}"',
        'service="web"',
        'instance="web-1"',
        'destination_service="backend"',
        f'envoy_route="{API_ROUTE}"',  # Envoy's own tags are kept
        'envoy_virtual_host="backend"',
    ):
        assert expected in labels.split(","), (expected, labels)
