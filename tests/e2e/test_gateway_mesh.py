"""The gateway in the mesh, end to end: a real control plane, gateway Envoys (``isthmus dp run --proxy-type
gateway``), sidecars and upstream apps.

* A Kong Service ``<service>.mesh`` reaches that service over mTLS with the gateway's identity with no
  ``networking.outbound`` entry; the mesh's policies for that leg apply unless the Kong Service sets the value.
* A sidecar's inbound drops Kong's consumer headers unless the caller is a gateway of the mesh.
* Gateway to gateway by mesh name: gateway B accepts mesh mTLS on its proxy listener, its MeshTrafficPermission
  holds, and its own Kong routes and plugins apply.
* The mesh scenario of issue 8 with key-auth (when the key-auth plugin is on this build).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, App, ControlPlane, Proc, Sidecar, wait_for

pytestmark = pytest.mark.e2e

MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""
POLICIES = """type: MeshTrafficPermission
mesh: default
name: backend-only-edge
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: edge}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: open-to-all
spec:
  targetRef: {kind: MeshService, name: open}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: edge-b-only-edge
spec:
  targetRef: {kind: MeshService, name: edge-b}
  from:
  - targetRef: {kind: MeshService, name: edge}
    default: {action: Allow}
---
type: MeshRetry
mesh: default
name: gateway-retries
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http:
        numRetries: 3
        retryOn: ["5xx"]
"""
CONSUMER_HEADERS = (
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-consumer-groups",
    "x-authenticated-groups",
    "x-authenticated-scope",
    "x-authenticated-userid",
)


def gateway_dataplane(name: str, service: str) -> str:
    return f"""type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  gateway:
    type: DELEGATED
    tags:
      kuma.io/service: {service}
"""


class Gateway:
    def __init__(
        self, tmp: Path, cp: ControlPlane, name: str, service: str, workspace: str = "default"
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        file = tmp / f"gw-{name}.yaml"
        file.write_text(gateway_dataplane(name, service))
        token = tmp / f"token-{name}"
        token.write_text(cp.dataplane_token("default", name))
        args = [
            *ISTHMUS,
            "dp",
            "run",
            "--proxy-type",
            "gateway",
            "--cp-address",
            cp.https_url,
            "--ca-cert-file",
            str(cp.ca_file),
            "--dataplane-token-file",
            str(token),
            "--dataplane-file",
            str(file),
            "--proxy-listen",
            f"127.0.0.1:{self.port}",
            "--workspace",
            workspace,
            "--admin-port",
            str(self.admin_port),
            "--work-dir",
            str(tmp / f"work-{name}"),
            "--log-level",
            "warning",
        ]
        self.proc = Proc(f"gw-{name}", args, tmp)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def start(self) -> Gateway:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()


def sidecar_dataplane(name: str, service: str, app_port: int, outbounds: dict[str, int] | None = None) -> str:
    out = "".join(
        f"\n  - port: {port}\n    tags:\n      kuma.io/service: {svc}"
        for svc, port in (outbounds or {}).items()
    )
    return f"""type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {app_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
  outbound:{out or " []"}
"""


class Mesh:
    """The mesh of the tests: backend (only the gateway edge may call it), open (anyone may), a mesh member web
    with outbounds to backend, open and edge-b, the gateway edge (workspace default)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cp = ControlPlane(tmp).start()
        self.kong = httpx.Client(base_url=f"http://127.0.0.1:{self.cp.gateway_admin_port}", timeout=10)
        self.items: list[Any] = []
        self.cp.apply(MESH)
        self.cp.apply(POLICIES)
        self.backend_app = self._keep(App(tmp, "backend", instance="backend-1").start())
        self.open_app = self._keep(App(tmp, "open", instance="open-1").start())
        self.plain_app = self._keep(App(tmp, "plain", instance="plain-1").start())  # gateway B's own upstream
        self._keep(
            Sidecar(tmp, self.cp, sidecar_dataplane("backend-1", "backend", self.backend_app.port)).start()
        )
        self._keep(Sidecar(tmp, self.cp, sidecar_dataplane("open-1", "open", self.open_app.port)).start())
        self.web_out = {"backend": free_port(), "open": free_port(), "edge-b": free_port()}
        web_app = self._keep(App(tmp, "web", instance="web-1").start())
        self._keep(
            Sidecar(tmp, self.cp, sidecar_dataplane("web-1", "web", web_app.port, self.web_out)).start()
        )
        self.edge = self._keep(Gateway(tmp, self.cp, "edge-1", "edge").start())

    def _keep(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def web(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request from the mesh member web (its sidecar's outbound: mTLS with web's identity)."""
        return httpx.get(f"http://127.0.0.1:{self.web_out[service]}{path}", timeout=10, **kwargs)

    def stop(self) -> None:
        self.kong.close()
        for item in reversed(self.items):
            item.stop()
        self.cp.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("gateway-mesh"))
    try:
        yield m
    finally:
        m.stop()


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def _answers(
    get: Callable[[], httpx.Response], status: int, service: str | None = None
) -> Callable[[], bool]:
    def check() -> bool:
        try:
            r = get()
        except httpx.HTTPError:
            return False
        return r.status_code == status and (service is None or r.json().get("service") == service)

    return check


def _has_plugin(kong: httpx.Client, name: str) -> bool:
    return name in kong.get("/").json().get("plugins", {}).get("available_on_server", {})


def test_gateway_reaches_a_mesh_service_by_name_without_an_outbound(mesh: Mesh) -> None:
    _ok(mesh.kong.put("/services/backend", json={"url": "http://backend.mesh/api"}))
    _ok(mesh.kong.put("/services/backend/routes/backend", json={"paths": ["/backend"]}))
    gw = mesh.edge.http
    wait_for(_answers(lambda: gw.get("/backend/x"), 200, "backend"), 60, what="gateway -> backend.mesh")
    body = gw.get("/backend/items").json()
    assert body["path"] == "/api/items"
    assert "URI=spiffe://default/edge" in body["caller"]  # mTLS with the gateway's identity
    # the backend allows only the gateway: a mesh member is refused
    wait_for(_answers(lambda: mesh.web("backend", "/x"), 403), 30, what="web -> backend refused")


def test_mesh_policies_apply_to_the_leg_unless_kong_sets_the_value(mesh: Mesh) -> None:
    # MeshRetry (503, 3 retries) targets the gateway's leg to backend; /flaky answers 503 every other request
    _ok(mesh.kong.put("/services/backend", json={"url": "http://backend.mesh/api"}))
    _ok(mesh.kong.put("/services/backend/routes/backend", json={"paths": ["/backend"]}))
    _ok(mesh.kong.put("/services/backend-retry", json={"url": "http://backend.mesh/"}))
    _ok(mesh.kong.put("/services/backend-retry/routes/retry", json={"paths": ["/retry"]}))
    _ok(mesh.kong.put("/services/backend-no-retry", json={"url": "http://backend.mesh/", "retries": 0}))
    _ok(mesh.kong.put("/services/backend-no-retry/routes/no-retry", json={"paths": ["/no-retry"]}))
    gw = mesh.edge.http
    wait_for(_answers(lambda: gw.get("/no-retry/x"), 200, "backend"), 60, what="gateway -> backend-no-retry")
    # the mesh's retries: every request succeeds
    wait_for(_answers(lambda: gw.get("/retry/x"), 200, "backend"), 60, what="gateway -> backend-retry")
    assert [gw.get("/retry/flaky").status_code for _ in range(4)] == [200] * 4
    # the Kong Service sets retries: 0, which wins: of two requests in a row exactly one meets the 503
    statuses = sorted(gw.get("/no-retry/flaky").status_code for _ in range(2))
    assert statuses == [200, 503]
    # the gateway's Envoy has the mesh's retry policy on one route and Kong's on the other
    dump = httpx.get(
        f"http://127.0.0.1:{mesh.edge.admin_port}/config_dump?resource=dynamic_route_configs"
    ).json()
    routes = {
        r["name"]: r["route"]
        for c in dump["configs"]
        for vh in c["route_config"]["virtual_hosts"]
        for r in vh["routes"]
        if "route" in r
    }
    assert routes["retry /retry"]["retry_policy"]["num_retries"] == 3
    assert "retry_policy" not in routes["no-retry /no-retry"]
    # isthmus explain of the gateway proxy: the leg with the mesh's retry policy, and which Kong value wins
    explained = _ok(mesh.cp.http.get("/meshes/default/dataplanes/edge-1/_explain", params={"to": "backend"}))
    assert explained["outbound"]["name"] == "gateway-leg:backend"
    assert explained["retry"]["http"]["num_retries"] == 3
    assert "Kong Service 'backend-no-retry' sets retries=0: it overrides MeshRetry for this leg" in explained["kongOverrides"]  # fmt: skip
    assert [d["allowed"] for d in explained["destinations"]] == [True]


def test_kong_connect_timeout_and_upstream_get_their_own_copy_of_the_mesh_cluster(mesh: Mesh) -> None:
    # an Upstream named after the mesh host lends its algorithm and passive health checks (its targets are unused)
    upstream = {
        "algorithm": "least-connections",
        "healthchecks": {"passive": {"unhealthy": {"http_failures": 3}}},
    }
    _ok(mesh.kong.put("/upstreams/backend.mesh", json=upstream))
    sid = _ok(
        mesh.kong.put("/services/backend-own", json={"url": "http://backend.mesh/", "connect_timeout": 1500})
    )["id"]
    _ok(mesh.kong.put("/services/backend-own/routes/own", json={"paths": ["/own"]}))
    gw = mesh.edge.http
    wait_for(
        _answers(lambda: gw.get("/own/x"), 200, "backend"), 60, what="gateway -> its own mesh-leg cluster"
    )
    assert "URI=spiffe://default/edge" in gw.get("/own/x").json()["caller"]
    dump = httpx.get(
        f"http://127.0.0.1:{mesh.edge.admin_port}/config_dump?resource=dynamic_active_clusters"
    ).json()
    clusters = {c["cluster"]["name"]: c["cluster"] for c in dump["configs"]}
    own = clusters[f"kong:default:mesh-leg:{sid}"]
    assert own["connect_timeout"] == "1.500s" and own["lb_policy"] == "LEAST_REQUEST"
    assert own["outlier_detection"]["consecutive_5xx"] == 3
    assert own["eds_cluster_config"]["service_name"] == "backend"
    assert own["transport_socket"] == clusters["backend"]["transport_socket"]  # the gateway's mesh mTLS
    assert mesh.kong.delete("/upstreams/backend.mesh").status_code == 204


def test_sidecar_drops_consumer_headers_unless_the_caller_is_a_gateway(mesh: Mesh) -> None:
    forged = {h: "mallory" for h in CONSUMER_HEADERS} | {"x-other": "kept"}
    wait_for(_answers(lambda: mesh.web("open", "/x"), 200, "open"), 60, what="web -> open")
    seen = mesh.web("open", "/x", headers=forged).json()["headers"]
    assert seen.get("x-other") == "kept"
    assert not set(CONSUMER_HEADERS) & set(seen)
    # a client's own X-Forwarded-Client-Cert naming the gateway changes nothing: the inbound replaces it
    spoof = forged | {"x-forwarded-client-cert": "By=x;URI=spiffe://default/edge"}
    seen = mesh.web("open", "/x", headers=spoof).json()["headers"]
    assert not set(CONSUMER_HEADERS) & set(seen)
    if _has_plugin(mesh.kong, "key-auth"):
        return  # the gateway removes a client's consumer headers itself: test_mesh_scenario_with_key_auth
    # from the gateway (a caller that is a gateway of the mesh), the sidecar keeps them
    _ok(mesh.kong.put("/services/open", json={"url": "http://open.mesh/"}))
    _ok(mesh.kong.put("/services/open/routes/open", json={"paths": ["/open"]}))
    gw = mesh.edge.http
    wait_for(_answers(lambda: gw.get("/open/x"), 200, "open"), 60, what="gateway -> open.mesh")
    seen = gw.get("/open/x", headers=forged).json()["headers"]
    assert seen["x-consumer-username"] == "mallory"


def test_gateway_to_gateway_by_mesh_name(mesh: Mesh) -> None:
    # gateway B (edge-b) serves workspace "b": its own route and plugin (correlation-id) in front of a plain app
    kong_b = "/b"
    _ok(mesh.kong.put(f"{kong_b}/services/plain", json={"url": f"http://127.0.0.1:{mesh.plain_app.port}/"}))
    _ok(mesh.kong.put(f"{kong_b}/services/plain/routes/plain", json={"paths": ["/from-a"]}))
    _ok(
        mesh.kong.post(
            f"{kong_b}/routes/plain/plugins",
            json={
                "name": "correlation-id",
                "config": {"header_name": "X-B-Request-Id", "echo_downstream": True},
            },
        )
    )
    edge_b = Gateway(mesh.tmp, mesh.cp, "edge-b-1", "edge-b", workspace="b").start()
    try:
        wait_for(_answers(lambda: edge_b.http.get("/from-a/x"), 200, "plain"), 60, what="gateway B serves")
        # gateway A: a Kong Service whose host is B's mesh name
        _ok(mesh.kong.put("/services/to-b", json={"url": "http://edge-b.mesh/from-a"}))
        _ok(mesh.kong.put("/services/to-b/routes/to-b", json={"paths": ["/to-b"]}))
        gw = mesh.edge.http
        wait_for(_answers(lambda: gw.get("/to-b/x"), 200, "plain"), 60, what="gateway A -> gateway B")
        response = gw.get("/to-b/x")
        body = response.json()
        assert body["path"] == "/x"  # A stripped /to-b and added /from-a, B stripped /from-a
        assert body["headers"].get("x-b-request-id")  # B's plugin ran
        assert response.headers.get("x-b-request-id") == body["headers"]["x-b-request-id"]
        # B's MeshTrafficPermission allows only edge: a mesh member is refused over mTLS
        wait_for(_answers(lambda: mesh.web("edge-b", "/from-a/x"), 403), 30, what="web -> edge-b refused")
    finally:
        edge_b.stop()


def test_mesh_scenario_with_key_auth(mesh: Mesh) -> None:
    """Issue 8's scenario: client -> gateway (key-auth) -> a service that allows only the gateway."""
    if not _has_plugin(mesh.kong, "key-auth"):
        pytest.skip("waiting for the key-auth plugin (isthmus.gateway.plugins.auth)")
    _ok(mesh.kong.put("/services/secure", json={"url": "http://backend.mesh/"}))
    _ok(mesh.kong.put("/services/secure/routes/secure", json={"paths": ["/secure"]}))
    _ok(mesh.kong.post("/services/secure/plugins", json={"name": "key-auth"}))
    _ok(mesh.kong.put("/consumers/alice", json={"custom_id": "alice-1"}))
    _ok(mesh.kong.post("/consumers/alice/key-auth", json={"key": "alice-secret"}))
    gw = mesh.edge.http
    key = {"apikey": "alice-secret"}
    wait_for(_answers(lambda: gw.get("/secure/x"), 401), 60, what="key-auth on the route")

    def alice() -> bool:
        r = gw.get("/secure/x", headers=key)
        return r.status_code == 200 and bool(r.json()["headers"].get("x-consumer-username") == "alice")

    wait_for(alice, 60, what="alice's key accepted")
    body = gw.get("/secure/x", headers=key).json()
    assert body["service"] == "backend" and body["headers"]["x-consumer-custom-id"] == "alice-1"
    assert "URI=spiffe://default/edge" in body["caller"]
    # a forged consumer name never reaches the service through the gateway
    body = gw.get("/secure/x", headers=key | {"X-Consumer-Username": "mallory"}).json()
    assert body["headers"]["x-consumer-username"] == "alice"
    assert gw.get("/secure/x", headers={"X-Consumer-Username": "mallory"}).status_code == 401
    # nor from a mesh member, which the service refuses anyway
    assert mesh.web("backend", "/x", headers={"X-Consumer-Username": "mallory"}).status_code == 403
