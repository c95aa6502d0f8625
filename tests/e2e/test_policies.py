"""End to end: the policy engine with real Envoys: default policies, MeshTimeout, precedence in ``inspect`` and
in traffic, and ``explain``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ISTHMUS, ControlPlane, wait_for
from tests.e2e.test_mesh_traffic import ALLOW_ALL, DENY_WEB, Mesh

pytestmark = pytest.mark.e2e


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        m.cp.apply(ALLOW_ALL)
        wait_for(lambda: httpx.get(m.url, timeout=5).status_code == 200, 20, what="mesh traffic")
        yield m
    finally:
        m.stop()


def timeout_policy(
    name: str, target: str, request_timeout: str, to: str = "{kind: MeshService, name: backend}"
) -> str:
    return f"""
type: MeshTimeout
mesh: default
name: {name}
spec:
  targetRef: {target}
  to:
  - targetRef: {to}
    default:
      http: {{requestTimeout: {request_timeout}}}
"""


def timed_get(url: str) -> tuple[int, float]:
    start = time.monotonic()
    status = httpx.get(url, timeout=30).status_code
    return status, time.monotonic() - start


def outbound_timeout(cp: ControlPlane) -> dict[str, object]:
    doc = cp.http.get("/meshes/default/dataplanes/web-1/_policies").json()
    [outbound] = doc["outbounds"]
    return dict(outbound["MeshTimeout"])


def test_new_mesh_gets_default_policies_unless_skipped(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, store="memory").start()
    try:
        assert cp.http.put("/meshes/one", json={"type": "Mesh", "name": "one"}).status_code == 201
        names = {i["name"] for i in cp.http.get("/meshes/one/meshtimeouts").json()["items"]}
        assert names == {"mesh-timeout-all-one"}
        skip_all = {"type": "Mesh", "name": "two", "skipCreatingInitialPolicies": ["*"]}
        assert cp.http.put("/meshes/two", json=skip_all).status_code == 201
        assert cp.http.get("/meshes/two/meshtimeouts").json()["total"] == 0
        skip_timeout = {"type": "Mesh", "name": "three", "skipCreatingInitialPolicies": ["MeshTimeout"]}
        assert cp.http.put("/meshes/three", json=skip_timeout).status_code == 201
        assert cp.http.get("/meshes/three/meshtimeouts").json()["total"] == 0
        # updating a mesh does not bring back a deleted default
        assert cp.http.delete("/meshes/one/meshtimeouts/mesh-timeout-all-one").status_code == 200
        assert cp.http.put("/meshes/one", json={"type": "Mesh", "name": "one"}).status_code == 200
        assert cp.http.get("/meshes/one/meshtimeouts").json()["total"] == 0
    finally:
        cp.stop()


def test_invalid_timeout_is_refused_with_the_field(mesh: Mesh) -> None:
    body = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "bad",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "soon"}}}],
        },
    }
    resp = mesh.cp.http.put("/meshes/default/meshtimeouts/bad", json=body)
    assert resp.status_code == 400, resp.text
    fields = [p["field"] for p in resp.json()["invalid_parameters"]]
    assert any("to[0].default.http.requestTimeout" in f for f in fields), fields
    assert mesh.cp.http.get("/meshes/default/meshtimeouts/bad").status_code == 404


def test_timeout_turns_a_slow_call_into_504(mesh: Mesh) -> None:
    # the mesh default allows 15 s: a 1.5 s call succeeds
    assert timed_get(mesh.url + "delay/1500")[0] == 200
    mesh.cp.apply(timeout_policy("backend-1s", "{kind: Mesh}", "1s"))
    status, elapsed = wait_for(
        lambda: (r := timed_get(mesh.url + "delay/3000"))[0] == 504 and r, 15, what="504 after MeshTimeout"
    )
    assert status == 504
    assert 0.8 <= elapsed <= 2.0, elapsed
    assert timed_get(mesh.url)[0] == 200  # fast calls are unaffected


def test_precedence_mesh_then_service_then_dataplane(mesh: Mesh) -> None:
    """Kuma's order: the top-level targetRef kind first (Mesh < Dataplane < MeshSubset < MeshService), then the
    ``to`` item's kind (Mesh < MeshService), then the name. A mesh-wide default is overridden by a rule for the
    service, which is overridden by a policy that targets the data plane."""
    mesh.cp.apply(timeout_policy("mesh-wide", "{kind: Mesh}", "5s", to="{kind: Mesh}"))
    mesh.cp.apply(timeout_policy("for-backend", "{kind: Mesh}", "2s"))
    mesh.cp.apply(timeout_policy("for-web-1", "{kind: Dataplane, name: web-1}", "1s"))

    def resolved() -> str:
        conf = outbound_timeout(mesh.cp)["conf"]
        return str(conf["http"]["requestTimeout"])  # type: ignore[index]

    assert wait_for(lambda: resolved() == "1s", 10, what="the Dataplane policy wins")
    origins = [o["policy"] for o in outbound_timeout(mesh.cp)["origins"]]  # type: ignore[union-attr]
    assert origins.index("mesh-wide") < origins.index("for-backend") < origins.index("for-web-1")
    assert origins[-1] == "for-web-1"
    wait_for(lambda: timed_get(mesh.url + "delay/1500")[0] == 504, 10, what="1 s limit in traffic")
    # without the Dataplane policy, the service rule (2 s) applies
    mesh.cp.delete("/meshes/default/meshtimeouts/for-web-1")
    wait_for(lambda: resolved() == "2s", 10, what="the service rule after the Dataplane policy is gone")
    wait_for(lambda: timed_get(mesh.url + "delay/1500")[0] == 200, 10, what="2 s limit in traffic")
    assert timed_get(mesh.url + "delay/3000")[0] == 504
    # and without it, the mesh-wide 5 s
    mesh.cp.delete("/meshes/default/meshtimeouts/for-backend")
    wait_for(lambda: timed_get(mesh.url + "delay/3000")[0] == 200, 15, what="5 s limit in traffic")


def test_inspect_policies_and_explain_from_the_cli(mesh: Mesh) -> None:
    env_cp = ["--cp-address", mesh.cp.url]
    mesh.cp.apply(timeout_policy("backend-1s", "{kind: Mesh}", "1s"))
    wait_for(lambda: outbound_timeout(mesh.cp)["conf"]["http"]["requestTimeout"] == "1s", 10)  # type: ignore[index]
    out = subprocess.run(
        [*ISTHMUS, "inspect", "dataplane", "web-1", "--policies", *env_cp], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert 'MeshTimeout "backend-1s"' in out.stdout
    assert "resolved MeshTimeout" in out.stdout and '"requestTimeout":"1s"' in out.stdout

    def explain(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [*ISTHMUS, "explain", "--from", "web-1", "--to", "backend", "--path", "/x", *extra, *env_cp]
        return subprocess.run(cmd, capture_output=True, text=True)

    res = explain()
    assert res.returncode == 0, res.stderr
    assert "backend-1 (inbound:127.0.0.1:" in res.stdout and "ALLOWED" in res.stdout
    assert "request_ms=1000" in res.stdout
    mesh.cp.apply(DENY_WEB)
    wait_for(lambda: "DENIED" in explain().stdout, 10, what="explain sees the deny")
    wait_for(lambda: httpx.get(mesh.url, timeout=5).status_code == 403, 10, what="traffic agrees")
    bad = explain("--header", "novalue")
    assert bad.returncode == 1
    assert "header[0]" in bad.stderr
    unknown = subprocess.run(
        [*ISTHMUS, "explain", "--from", "web-1", "--to", "nothing", *env_cp], capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "to" in unknown.stderr


def test_policy_with_a_missing_target_is_accepted_and_reported(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, store="memory").start()
    try:
        cp.apply("type: Mesh\nname: default\n")
        cp.apply(timeout_policy("for-ghost", "{kind: Mesh}", "1s", to="{kind: MeshService, name: ghost}"))

        def status() -> dict[str, object]:
            resp = cp.http.get("/meshes/default/meshtimeouts/for-ghost/_status")
            return dict(resp.json()) if resp.status_code == 200 else {}

        doc = wait_for(lambda: (s := status()) and s, 10, what="policy status")
        assert doc["ok"] is False
        ghost = [r for r in doc["targetRefs"] if r["field"] == "spec.to[0].targetRef"]  # type: ignore[attr-defined]
        assert ghost and ghost[0]["resolved"] is False and "ghost" in ghost[0]["reason"]
        cp.apply(
            """
type: Dataplane
mesh: default
name: ghost-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 21001
    servicePort: 9001
    tags: {kuma.io/service: ghost}
"""
        )
        wait_for(lambda: status().get("ok") is True, 10, what="target resolved once it exists")
        assert status()["selectedDataplanes"] == ["ghost-1"]
        assert cp.http.get("/meshes/default/dataplanes/ghost-1/_status").status_code == 404
    finally:
        cp.stop()


MESH_TLS = """
type: MeshTLS
mesh: default
name: backend-tls
spec:
  targetRef: {{kind: MeshService, name: backend}}
  from:
  - targetRef: {{kind: Mesh}}
    default: {body}
"""


def _tls12_only_handshake(port: int) -> str:
    """Try a TLS 1.2-only handshake (no client certificate); return the error text, or "" if it completed."""
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw):
            return ""
    except (ssl.SSLError, OSError) as exc:
        return str(exc)


def test_mesh_tls_versions_and_permissive_mode(mesh: Mesh) -> None:
    port = mesh.backend_inbound
    # default: TLS 1.2 is accepted as a version (the handshake then fails on the missing client certificate)
    assert "PROTOCOL_VERSION" not in _tls12_only_handshake(port).upper()
    mesh.cp.apply(MESH_TLS.format(body="{tlsVersion: {min: TLS13}}"))
    wait_for(lambda: "PROTOCOL_VERSION" in _tls12_only_handshake(port).upper(), 10, what="TLS 1.2 refused")
    assert httpx.get(mesh.url, timeout=5).status_code == 200  # mesh traffic negotiates TLS 1.3
    # Strict by default: plaintext to the inbound is refused; Permissive lets it in
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=3)
    mesh.cp.apply(MESH_TLS.format(body="{mode: Permissive, tlsVersion: {min: TLS13}}"))
    ok = wait_for(lambda: _plain_status(port) == 200, 10, what="plaintext accepted in Permissive mode")
    assert ok
    # and mTLS still works (the listener's filter chains changed: pooled connections are drained once)
    wait_for(lambda: httpx.get(mesh.url, timeout=5).status_code == 200, 10, what="mesh traffic in Permissive")


def _plain_status(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=3).status_code
    except httpx.HTTPError:
        return 0


PROXY_PATCH = """
type: MeshProxyPatch
mesh: default
name: web-extras
spec:
  targetRef: {{kind: Dataplane, name: web-1}}
  default:
    appendModifications:
    - listener:
        operation: Add
        value: |
          name: hello
          address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
          filter_chains:
          - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: hello
                route_config:
                  virtual_hosts:
                  - name: hello
                    domains: ['*']
                    routes:
                    - match: {{prefix: /}}
                      direct_response: {{status: 200, body: {{inline_string: hello from a patch}}}}
                http_filters:
                - name: envoy.filters.http.router
                  typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
    - virtualHost:
        operation: Patch
        match: {{name: backend}}
        value: |
          request_headers_to_add:
          - header: {{key: x-patched, value: 'yes'}}
"""


def test_mesh_proxy_patch_adds_a_listener_and_patches_routes(mesh: Mesh) -> None:
    from tests.conftest import free_port

    port = free_port()
    mesh.cp.apply(PROXY_PATCH.format(port=port))

    def hello() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=3).text
        except httpx.HTTPError:
            return ""

    assert wait_for(lambda: hello() == "hello from a patch", 15, what="the patched-in listener")
    seen = wait_for(
        lambda: (h := httpx.get(mesh.url, timeout=5).json()["headers"]).get("x-patched") == "yes" and h,
        10,
        what="the patched virtual host's header at the backend",
    )
    assert seen["x-patched"] == "yes"
    # a patch that is invalid in itself is refused at apply, naming the field
    bad = {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "bad",
        "spec": {"default": {"appendModifications": [{"cluster": {"operation": "Add", "value": "nme: x"}}]}},
    }
    resp = mesh.cp.http.put("/meshes/default/meshproxypatches/bad", json=bad)
    assert resp.status_code == 400
    assert (
        resp.json()["invalid_parameters"][0]["field"] == "spec.default.appendModifications[0].cluster.value"
    )


ROUTE_AND_TIMEOUT = """
type: MeshHTTPRoute
mesh: default
name: delays
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /delay}}]
      default:  # no backendRefs (Kuma: only filters): the requests go to the original destination, backend
        filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-custom-header, value: xyz}]}
---
type: MeshTimeout
mesh: default
name: delays-are-cut-short
spec:
  targetRef: {kind: MeshHTTPRoute, name: delays}
  to:
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 1s}}
"""


def test_timeout_attached_to_a_route(mesh: Mesh) -> None:
    mesh.cp.apply(ROUTE_AND_TIMEOUT)
    wait_for(lambda: timed_get(mesh.url + "delay/3000")[0] == 504, 15, what="the route's 1 s timeout")
    status, elapsed = timed_get(mesh.url + "delay/2500")
    assert status == 504 and elapsed < 2.0
    # requests the route does not match keep the outbound's timeouts
    assert httpx.get(mesh.url + "status/200", timeout=10).status_code == 200


BROKEN_PATCH = """
type: MeshProxyPatch
mesh: default
name: dangling-route
spec:
  targetRef: {kind: Dataplane, name: a-1}
  default:
    appendModifications:
    - listener:
        operation: Add
        value: |
          name: dangling
          address: {socket_address: {address: 127.0.0.1, port_value: 29998}}
          filter_chains:
          - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: dangling
                rds: {route_config_name: nowhere, config_source: {ads: {}, resource_api_version: V3}}
                http_filters:
                - name: envoy.filters.http.router
                  typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""


def test_a_patch_that_breaks_one_proxy_leaves_it_and_the_others_alone(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, store="memory").start()
    try:
        cp.apply("type: Mesh\nname: default\n")
        for name, port in (("a-1", 21101), ("b-1", 21102)):
            cp.apply(
                f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
                f"  - port: {port}\n    servicePort: {port + 1000}\n    tags: {{kuma.io/service: {name[0]}}}\n"
            )

        def config(name: str) -> dict[str, object]:
            return dict(cp.http.get(f"/meshes/default/dataplanes/{name}/_config").json())

        wait_for(lambda: config("a-1")["versions"] and config("b-1")["versions"], 10, what="initial configs")
        before_a, before_b = config("a-1")["versions"], config("b-1")["versions"]
        cp.apply(BROKEN_PATCH)
        wait_for(lambda: config("a-1")["error"], 10, what="the error reported on a-1")
        assert "nowhere" in str(config("a-1")["error"])
        assert config("a-1")["versions"] == before_a  # a-1 keeps its last good configuration
        assert config("b-1")["versions"] == before_b and config("b-1")["error"] is None
        insight = cp.http.get("/meshes/default/dataplanes+insights/a-1").json()
        assert "nowhere" in insight["dataplaneInsight"]["configError"]
    finally:
        cp.stop()


def test_inspect_shows_permission_rules(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, store="memory").start()
    try:
        cp.apply("type: Mesh\nname: default\n")
        cp.apply(
            "type: Dataplane\nmesh: default\nname: r-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            "  - port: 21201\n    servicePort: 22201\n    tags: {kuma.io/service: r}\n"
        )
        cp.apply(
            """
type: MeshTrafficPermission
mesh: default
name: r-rules
spec:
  targetRef: {kind: Mesh}
  rules:
  - default:
      deny: [{spiffeID: {type: Exact, value: spiffe://default/legacy}}]
      allow: [{spiffeID: {type: Prefix, value: spiffe://default/}}]
"""
        )
        out = subprocess.run(
            [*ISTHMUS, "inspect", "dataplane", "r-1", "--policies", "--cp-address", cp.url],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert "rules deny: Exact spiffe://default/legacy" in out.stdout
        assert "rules allow: Prefix spiffe://default/" in out.stdout
    finally:
        cp.stop()
