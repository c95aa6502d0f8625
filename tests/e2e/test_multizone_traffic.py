"""End to end, cross-zone traffic with one control plane serving two zones (Dataplanes tagged ``kuma.io/zone``,
zone-b's ZoneIngress run by ``isthmus dp run --proxy-type ingress``): a client in zone-a reaches zone-b only
through zone-b's ingress, which passes TLS through on SNI and holds no key; the local zone is preferred and
traffic fails over to zone-b when the local instance fails (outlier detection), then comes back; permissions
apply by identity across zones."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, App, ControlPlane, Proc, Sidecar, running, wait_for

pytestmark = pytest.mark.e2e

MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""
PERMISSIONS = """
type: MeshTrafficPermission
mesh: default
name: backend-from-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
"""
OUTLIERS = """
type: MeshCircuitBreaker
mesh: default
name: backend-outliers
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      outlierDetection:
        interval: 1s
        baseEjectionTime: 3s
        maxEjectionPercent: 100
        detectors:
          totalFailures: {consecutive: 1}
          localOriginFailures: {consecutive: 1}
"""


def _backend(name: str, zone: str, address: str, port: int, app: App) -> str:
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: {address}
  inbound:
  - port: {port}
    servicePort: {app.port}
    tags: {{kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: {zone}}}
"""


def _client(name: str, port: int, out: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    servicePort: {free_port()}
    tags: {{kuma.io/service: {name}, kuma.io/protocol: http, kuma.io/zone: zone-a}}
  outbound:
  - port: {out}
    tags: {{kuma.io/service: backend}}
"""


def _ingress(tmp: Path, cp: ControlPlane, port: int, admin: int) -> Proc:
    (tmp / "zi.yaml").write_text(
        f"""
type: ZoneIngress
name: zi-b
zone: zone-b
networking:
  address: 127.0.0.3
  port: {port}
  advertisedAddress: 127.0.0.3
  advertisedPort: {port}
"""
    )
    resp = cp.http.post("/tokens/dataplane", json={"mesh": "default", "name": "zi-b", "type": "ingress"})
    assert resp.status_code == 200, resp.text
    token = tmp / "zi-token"
    token.write_text(resp.text)
    args = [*ISTHMUS, "dp", "run", "--proxy-type", "ingress", "--dataplane-file", str(tmp / "zi.yaml")]
    args += [
        "--cp-address",
        cp.https_url,
        "--ca-cert-file",
        str(cp.ca_file),
        "--dataplane-token-file",
        str(token),
    ]
    args += ["--admin-port", str(admin), "--work-dir", str(tmp / "work-zi"), "--log-level", "warning"]
    return Proc("zi-b", args, tmp).start()


def _call(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=10)


def _eds(admin_port: int, cluster: str) -> list[dict[str, object]]:
    dump = httpx.get(f"http://127.0.0.1:{admin_port}/config_dump?include_eds", timeout=5).json()
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            if entry["endpoint_config"].get("cluster_name") == cluster:
                return entry["endpoint_config"].get("endpoints", [])  # type: ignore[no-any-return]
    return []


def test_cross_zone_through_ingress_failover_and_permissions(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path).start()
    app_a = App(tmp_path, "backend", instance="backend-zone-a").start()
    app_b = App(tmp_path, "backend", instance="backend-zone-b").start()
    zi_port, zi_admin = free_port(), free_port()
    web_out, other_out = free_port(), free_port()
    with running(cp, app_a, app_b):
        cp.apply(MESH)
        cp.apply(PERMISSIONS)
        cp.apply(OUTLIERS)
        a = Sidecar(tmp_path, cp, _backend("backend-a", "zone-a", "127.0.0.1", free_port(), app_a))
        b = Sidecar(tmp_path, cp, _backend("backend-b", "zone-b", "127.0.0.2", free_port(), app_b))
        web = Sidecar(tmp_path, cp, _client("web", free_port(), web_out))
        other = Sidecar(tmp_path, cp, _client("other", free_port(), other_out))
        zi = _ingress(tmp_path, cp, zi_port, zi_admin)
        with running(a, b, web, other, zi):
            for s in (a, b, web, other):
                s.start()
            web.wait_listener(f":{web_out}")
            other.wait_listener(f":{other_out}")

            # availableServices computed by the control plane for zone-b's ingress
            def available() -> list[dict[str, object]]:
                return cp.http.get("/zoneingresses/zi-b").json().get("availableServices") or []

            wait_for(
                lambda: any(s["tags"].get("kuma.io/zone") == "zone-b" for s in available()),
                30,
                what="availableServices",
            )  # type: ignore[union-attr]
            assert all(s["tags"].get("kuma.io/zone") == "zone-b" for s in available())  # type: ignore[union-attr]

            # the client's endpoints: zone-a's instance first, zone-b only as the ingress's public address
            def endpoints() -> list[dict[str, object]]:
                groups = _eds(web.admin_port, "backend")
                return groups if len(groups) == 2 else []

            groups = wait_for(endpoints, 30, what="two localities in the client's EDS")
            by_zone = {g["locality"]["zone"]: g for g in groups}  # type: ignore[index]
            assert by_zone["zone-a"].get("priority", 0) == 0
            assert by_zone["zone-b"]["priority"] == 1
            remote = by_zone["zone-b"]["lb_endpoints"]
            assert [e["endpoint"]["address"]["socket_address"] for e in remote] == [  # type: ignore[index]
                {"address": "127.0.0.3", "port_value": zi_port}
            ]

            # the local zone first
            wait_for(lambda: _call(web_out).status_code == 200, 30, what="web -> backend")
            assert {_call(web_out).json()["instance"] for _ in range(10)} == {"backend-zone-a"}

            # the ingress: TLS passthrough by SNI, no key, no certificate
            def ingress_ready() -> bool:
                return (
                    "inbound:127.0.0.3" in httpx.get(f"http://127.0.0.1:{zi_admin}/listeners", timeout=2).text
                )

            wait_for(ingress_ready, 30, what="the ingress's listener")
            dump = httpx.get(f"http://127.0.0.1:{zi_admin}/config_dump", timeout=5).json()
            parts = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
            listeners = str(parts["ListenersConfigDump"].get("dynamic_listeners", []))
            clusters = str(parts["ClustersConfigDump"].get("dynamic_active_clusters", []))
            assert "tls_inspector" in listeners and "TcpProxy" in listeners
            assert "backend{mesh=default}" in listeners  # Kuma's SNI of the service
            assert "transport_socket" not in listeners + clusters  # TLS is never terminated nor originated
            secrets = parts.get("SecretsConfigDump", {})
            assert not secrets.get("dynamic_active_secrets") and not secrets.get("static_secrets")

            # failover: the local application stops, outlier detection ejects it, zone-b answers
            app_a.stop()

            def fails_over() -> bool:
                return all(_call(web_out).status_code == 200 for _ in range(5))

            wait_for(fails_over, 30, what="failover to zone-b")
            answers = [_call(web_out) for _ in range(20)]
            assert all(r.status_code == 200 for r in answers)
            assert {r.json()["instance"] for r in answers} == {"backend-zone-b"}
            stats = httpx.get(f"http://127.0.0.1:{zi_admin}/stats", timeout=5).text
            assert "default_backend.downstream_cx_total" in stats

            # permissions by identity across zones: web allowed, other refused by zone-b's sidecar
            assert _call(other_out).status_code == 403

            # the local instance returns: traffic comes back once its ejection ends
            app_a.proc.start()
            wait_for(
                lambda: all(_call(web_out).json()["instance"] == "backend-zone-a" for _ in range(5)),
                40,
                what="traffic back in zone-a",
            )
