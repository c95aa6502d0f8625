"""End to end, cross-zone traffic with one control plane serving two zones (Dataplanes tagged ``kuma.io/zone``,
zone-b's ZoneIngress run by ``isthmus dp run --proxy-type ingress``): a client in zone-a reaches zone-b only
through zone-b's ingress, which passes TLS through on SNI and holds no key; the local zone is preferred and
traffic fails over to zone-b when the local instance fails (outlier detection), then comes back; permissions
apply by identity across zones; a route to a subset that lives in zone-b is honoured past the ingress (the
subset's SNI, an ingress chain with only that subset's instances)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

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


def _backend(name: str, zone: str, address: str, port: int, app: App, version: str = "") -> str:
    extra = f", version: {version}" if version else ""
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: {address}
  inbound:
  - port: {port}
    servicePort: {app.port}
    tags: {{kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: {zone}{extra}}}
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


ROUTE_TO_V2 = """
type: MeshHTTPRoute
mesh: default
name: backend-to-v2
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
"""


def test_a_route_to_a_subset_in_another_zone_reaches_only_that_subset(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path).start()
    app_a = App(tmp_path, "backend", version="v1", instance="a-v1").start()
    app_b1 = App(tmp_path, "backend", version="v1", instance="b-v1").start()
    app_b2 = App(tmp_path, "backend", version="v2", instance="b-v2").start()
    zi_port, zi_admin = free_port(), free_port()
    web_out = free_port()
    with running(cp, app_a, app_b1, app_b2):
        cp.apply(MESH)
        cp.apply(PERMISSIONS)
        a = Sidecar(tmp_path, cp, _backend("backend-a", "zone-a", "127.0.0.1", free_port(), app_a, "v1"))
        b1 = Sidecar(tmp_path, cp, _backend("backend-b1", "zone-b", "127.0.0.2", free_port(), app_b1, "v1"))
        b2_port = free_port()
        b2 = Sidecar(tmp_path, cp, _backend("backend-b2", "zone-b", "127.0.0.2", b2_port, app_b2, "v2"))
        web = Sidecar(tmp_path, cp, _client("web", free_port(), web_out))
        zi = _ingress(tmp_path, cp, zi_port, zi_admin)
        with running(a, b1, b2, web, zi):
            for s in (a, b1, b2, web):
                s.start()
            web.wait_listener(f":{web_out}")
            wait_for(lambda: _call(web_out).status_code == 200, 30, what="web -> backend")
            # without a route: the local instance (zone-a, v1)
            assert {_call(web_out).json()["instance"] for _ in range(5)} == {"a-v1"}

            cp.apply(ROUTE_TO_V2)

            # zone-b's ingress gets a chain for the subset's SNI
            def subset_chain() -> bool:
                text = httpx.get(f"http://127.0.0.1:{zi_admin}/config_dump", timeout=5).text
                return "backend{mesh=default,version=v2}" in text

            wait_for(subset_chain, 30, what="the ingress's chain for version=v2")

            def only_v2() -> bool:
                answers = [_call(web_out) for _ in range(5)]
                return all(r.status_code == 200 and r.json()["instance"] == "b-v2" for r in answers)

            wait_for(only_v2, 30, what="the route to v2 through zone-b's ingress")
            # zone-b has v1 and v2 behind one ingress: only v2 answers (the service-level chain would mix them)
            answers = [_call(web_out) for _ in range(30)]
            assert all(r.status_code == 200 for r in answers)
            assert {r.json()["instance"] for r in answers} == {"b-v2"}
            # the client's connections (it keeps them open: few) went through the subset's chain, whose cluster
            # holds only zone-b's v2 instance; none through the service-level chain
            stats = httpx.get(f"http://127.0.0.1:{zi_admin}/stats?filter=downstream_cx_total", timeout=5).text
            counts = dict(line.split(": ") for line in stats.splitlines() if ": " in line)
            assert int(counts["tcp.default_backend_version_v2.downstream_cx_total"]) >= 1
            assert int(counts["tcp.default_backend.downstream_cx_total"]) == 0
            (group,) = _eds(zi_admin, "default:backend:version=v2")
            lb = cast(list[dict[str, Any]], group["lb_endpoints"])
            assert [e["endpoint"]["address"]["socket_address"] for e in lb] == [
                {"address": "127.0.0.2", "port_value": b2_port}
            ]
