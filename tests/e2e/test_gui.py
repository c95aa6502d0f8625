"""The web UI (``/gui``) end to end in headless Chromium (Debian's ``chromium``, driven by Playwright with that
executable: no browser download): a real control plane, a mesh with two data planes on real Envoys with traffic
between them, policies, and a gateway workspace with a service, a route, a consumer and a plugin.

Every page renders the real data (the data planes' names and state, the services' traffic from the scraped Envoy
stats, the policy and the proxies it affects, the Kong route), a policy applied through the API shows up on the
open policies page without a reload, and the UI asks for a token when the API answers 401. Screenshots of the
main pages are written to ``test-artifacts/gui/`` (ignored by git).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "gui"
WAIT_MS = 30_000

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
name: allow-web-to-backend
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
"""

TIMEOUT_POLICY = """
type: MeshTimeout
mesh: default
name: ui-live-timeout
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http:
        requestTimeout: 7s
"""


def dataplane(name: str, service: str, inbound: int, app: int, outbounds: list[tuple[int, str]]) -> str:
    out = "".join(f"\n  - port: {p}\n    tags:\n      kuma.io/service: {s}" for p, s in outbounds)
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound}
    servicePort: {app}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
  outbound:{out or " []"}
"""


class World:
    """web-1 (sidecar, calls backend) -> backend-1 (sidecar in front of a demo app); a Kong workspace."""

    def __init__(self, tmp: Path) -> None:
        self.cp = ControlPlane(tmp).start()
        self.parts: list[Any] = [self.cp]
        self.cp.apply(MESH)
        self.app = App(tmp, "backend", instance="backend-1").start()
        self.parts.append(self.app)
        inbound = free_port()
        self.backend = Sidecar(
            tmp, self.cp, dataplane("backend-1", "backend", inbound, self.app.port, [])
        ).start()
        self.parts.append(self.backend)
        self.outbound = free_port()
        web = dataplane("web-1", "web", free_port(), free_port(), [(self.outbound, "backend")])
        self.web = Sidecar(tmp, self.cp, web).start()
        self.parts.append(self.web)
        self.web.wait_listener(f"outbound:127.0.0.1:{self.outbound}")
        self.backend.wait_listener(f"inbound:127.0.0.1:{inbound}")
        wait_for(lambda: self.call().status_code == 200, 30, what="web -> backend through the mesh")
        kong = httpx.Client(base_url=f"http://127.0.0.1:{self.cp.gateway_admin_port}", timeout=10)
        for path, body in (
            ("/services", {"name": "ui-orders", "url": f"http://127.0.0.1:{self.app.port}/orders"}),
            ("/services/ui-orders/routes", {"name": "ui-orders-route", "paths": ["/orders"]}),
            ("/consumers", {"username": "ui-alice"}),
            ("/services/ui-orders/plugins", {"name": "correlation-id", "config": {"header_name": "X-Req"}}),
        ):
            resp = kong.post(path, json=body)
            assert resp.status_code == 201, f"POST {path}: {resp.status_code} {resp.text}"
        kong.close()
        self.traffic_stop = threading.Event()
        self.traffic = threading.Thread(target=self._send, daemon=True)
        self.traffic.start()

    def call(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.outbound}/", timeout=5)

    def _send(self) -> None:
        """A few requests per second from web to backend while the tests run."""
        while not self.traffic_stop.wait(0.1):
            try:
                self.call()
            except httpx.HTTPError:
                continue

    def stop(self) -> None:
        self.traffic_stop.set()
        self.traffic.join(5)
        for part in reversed(self.parts):
            part.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    w = World(tmp_path_factory.mktemp("gui"))
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 640})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    try:
        yield pg
    finally:
        context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def cell(page: Any, row: str, testid: str) -> str:
    return str(page.locator(f"{row} [data-testid={testid}]").first.inner_text()).strip()


def test_static_files_are_served_with_the_spa_fallback(world: World) -> None:
    http = world.cp.http
    index = http.get("/gui/")
    assert index.status_code == 200 and '<div id="app">' in index.text
    assert http.get("/gui/meshes/default/policies").text == index.text  # the router's paths: the same page
    asset = index.text.split('src="', 1)[1].split('"', 1)[0]
    js = http.get(asset)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"]
    assert http.get("/gui/assets/missing.js").status_code == 404
    assert http.get("/gui/../openapi.json").status_code in (
        200,
        404,
    )  # normalised by the client, never a file
    # the files need no credentials, even where the API needs them (an invalid token: the data is 401)
    bad = {"Authorization": "Bearer not.a.token"}
    assert httpx.get(f"{world.cp.url}/gui/", headers=bad).status_code == 200
    assert httpx.get(f"{world.cp.url}/meshes", headers=bad).status_code == 401


def test_meshes_page(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/")
    row = page.locator("[data-mesh=default]")
    row.wait_for()
    wait_for(lambda: row.locator("td").nth(3).inner_text() == "2", 30, what="two online data planes")
    assert row.locator("td").nth(1).inner_text() == "ca-1"
    page.locator("[data-testid=no-zones]").wait_for()
    shot(page, "meshes")


def test_dataplanes_page(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/meshes/default/dataplanes")
    for name in ("web-1", "backend-1"):
        row = f"[data-dataplane={name}]"
        page.locator(row).wait_for()
        wait_for(lambda row=row: cell(page, row, "online") == "Online", 30, what=f"{name} online")
        wait_for(lambda row=row: cell(page, row, "xds") == "ACK", 30, what=f"{name} ACKed")
        expiry = page.locator(f"{row} td").nth(3).inner_text()
        assert expiry.startswith("in "), expiry  # the workload certificate's expiry, in the future
    shot(page, "dataplanes")


def test_services_page_shows_scraped_traffic(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/meshes/default/services")
    row = "[data-service=backend]"
    page.locator(row).wait_for()

    def busy() -> bool:
        requests = cell(page, row, "requests")
        return requests.isdigit() and int(requests) >= 10 and cell(page, row, "rps") not in ("—", "0.00")

    wait_for(busy, 45, interval=0.5, what="backend's request rate from the scraped stats")
    assert cell(page, row, "error-rate") == "0.0%"
    assert cell(page, row, "p99").endswith(" ms")
    assert page.locator("[data-service=web]").count() == 1  # a service without traffic is listed too
    shot(page, "services")


def test_topology_page_shows_who_calls_whom(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/meshes/default/topology")
    edge = page.locator('[data-edge="web>backend"]')
    edge.wait_for()
    wait_for(
        lambda: "rps" in (edge.text_content() or ""), 45, interval=0.5, what="an observed web -> backend edge"
    )
    assert page.locator("[data-node=web]").count() == 1 and page.locator("[data-node=backend]").count() == 1
    shot(page, "topology")


def test_policies_page_updates_without_a_reload(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/meshes/default/policies")
    row = page.locator("[data-policy=allow-web-to-backend]")
    row.wait_for()
    wait_for(lambda: "backend-1" in row.locator("[data-testid=affected]").inner_text(), 30, what="affected")
    assert "Resolved" in row.inner_text()
    page.evaluate("window.__notReloaded = true")
    world.cp.apply(TIMEOUT_POLICY)
    live = page.locator("[data-policy=ui-live-timeout]")
    live.wait_for()  # polled: no navigation
    wait_for(lambda: "web-1" in live.locator("[data-testid=affected]").inner_text(), 30, what="its proxies")
    assert "backend-1" not in live.locator("[data-testid=affected]").inner_text()
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "policies")
    world.cp.delete("/meshes/default/meshtimeouts/ui-live-timeout")
    live.wait_for(state="detached")


def test_gateway_page(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/gateway/default")
    page.locator("[data-kong-route=ui-orders-route]").wait_for()
    route = page.locator("[data-kong-route=ui-orders-route]").inner_text()
    assert "/orders" in route and "ui-orders" in route
    assert page.locator("[data-kong-service=ui-orders]").count() == 1
    assert page.locator("[data-kong-consumer=ui-alice]").count() == 1
    assert "service ui-orders" in page.locator("[data-kong-plugin=correlation-id]").inner_text()
    assert "ui-orders-route" in page.locator("[data-testid=workspace-yaml]").inner_text()
    shot(page, "gateway")


def test_resource_yaml_page(world: World, page: Any) -> None:
    page.goto(f"{world.cp.url}/gui/meshes/default/dataplanes")
    page.locator("[data-dataplane=web-1] a", has_text="YAML").click()
    yaml_text = page.locator("[data-testid=yaml]")
    yaml_text.wait_for()
    text = yaml_text.inner_text()
    assert "name: web-1" in text and "kuma.io/service: web" in text and "type: Dataplane" in text
    shot(page, "yaml")


def test_the_ui_asks_for_a_token(tmp_path: Path, browser: Any) -> None:
    """Without loopback admin the API answers 401: the UI asks for a token and then shows the data."""
    cp = ControlPlane(tmp_path, extra_args=("--api-localhost-is-admin=false",))
    cp.start()
    try:
        token = (cp.data_dir / "admin-user-token").read_text().strip()
        httpx.put(
            f"{cp.url}/meshes/secured",
            json={"type": "Mesh", "name": "secured"},
            headers={"Authorization": f"Bearer {token}"},
        ).raise_for_status()
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{cp.url}/gui/")
        page.get_by_text("A token is needed").wait_for()
        page.locator("[data-testid=token-input] input, input[type=password]").first.fill(token)
        page.get_by_role("button", name="Use this token").click()
        page.locator("[data-mesh=secured]").wait_for()
        assert page.evaluate("sessionStorage.getItem('isthmus.token')") == token
        context.close()
    finally:
        cp.stop()
        cp.http.close()
