"""End to end, leaving a zone through its egress (``Mesh.routing.zoneEgress: true``), one control plane serving two
zones as test_multizone_traffic.py does: zone-a's client reaches zone-b's backend only as client sidecar -> zone-a's
egress (``isthmus dp run --proxy-type egress``) -> zone-b's ingress -> backend sidecar, each hop seen in that
Envoy's stats, the backend seeing the client's identity (mTLS end to end, neither zone proxy holds a key for it);
a MeshExternalService is reached through the egress, which terminates the mesh's mTLS and holds the only route out.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from isthmus.cli.main import app
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
routing:
  zoneEgress: true
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


def _backend(app: App, port: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: backend-b
networking:
  address: 127.0.0.2
  inbound:
  - port: {port}
    servicePort: {app.port}
    tags: {{kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: zone-b}}
"""


def _client(port: int, out: int, ext_out: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: web
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    servicePort: {free_port()}
    tags: {{kuma.io/service: web, kuma.io/protocol: http, kuma.io/zone: zone-a}}
  outbound:
  - port: {out}
    tags: {{kuma.io/service: backend}}
  - port: {ext_out}
    backendRef: {{kind: MeshExternalService, name: outside}}
"""


def _external(app: App) -> str:
    return f"""
type: MeshExternalService
mesh: default
name: outside
spec:
  match: {{type: HostnameGenerator, port: 80, protocol: http}}
  endpoints: [{{address: 127.0.0.1, port: {app.port}}}]
"""


def _zone_proxy(tmp: Path, cp: ControlPlane, kind: str, doc: str, name: str, admin: int) -> Proc:
    proxy_type = "ingress" if kind == "ZoneIngress" else "egress"
    (tmp / f"{name}.yaml").write_text(doc)
    resp = cp.http.post("/tokens/dataplane", json={"mesh": "default", "name": name, "type": proxy_type})
    assert resp.status_code == 200, resp.text
    token = tmp / f"{name}-token"
    token.write_text(resp.text)
    args = [*ISTHMUS, "dp", "run", "--proxy-type", proxy_type, "--dataplane-file", str(tmp / f"{name}.yaml")]
    args += [
        "--cp-address",
        cp.https_url,
        "--ca-cert-file",
        str(cp.ca_file),
        "--dataplane-token-file",
        str(token),
    ]
    args += ["--admin-port", str(admin), "--work-dir", str(tmp / f"work-{name}"), "--log-level", "warning"]
    return Proc(name, args, tmp).start()


def _cli(cp: ControlPlane, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"ISTHMUS_CP_ADDRESS": cp.url}, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _stat(admin: int, name: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{admin}/stats?filter={name}", timeout=5).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _eds(admin_port: int, cluster: str) -> list[dict[str, object]]:
    dump = httpx.get(f"http://127.0.0.1:{admin_port}/config_dump?include_eds", timeout=5).json()
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            if entry["endpoint_config"].get("cluster_name") == cluster:
                return entry["endpoint_config"].get("endpoints", [])  # type: ignore[no-any-return]
    return []


def test_cross_zone_and_external_traffic_leave_through_the_egress(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path).start()
    backend_app = App(tmp_path, "backend", instance="backend-zone-b").start()
    outside_app = App(tmp_path, "outside", instance="outside").start()
    zi_port, zi_admin, ze_port, ze_admin = free_port(), free_port(), free_port(), free_port()
    web_out, ext_out = free_port(), free_port()
    with running(cp, backend_app, outside_app):
        cp.apply(MESH)
        cp.apply(PERMISSIONS)  # the backend in zone-b allows web by the identity it sees through both hops
        cp.apply(_external(outside_app))
        b_port = free_port()
        backend = Sidecar(tmp_path, cp, _backend(backend_app, b_port))
        web = Sidecar(tmp_path, cp, _client(free_port(), web_out, ext_out))
        zi = _zone_proxy(
            tmp_path,
            cp,
            "ZoneIngress",
            f"type: ZoneIngress\nname: zi-b\nzone: zone-b\nnetworking: {{address: 127.0.0.3, port: {zi_port}, "
            f"advertisedAddress: 127.0.0.3, advertisedPort: {zi_port}}}\n",
            "zi-b",
            zi_admin,
        )
        ze = _zone_proxy(
            tmp_path,
            cp,
            "ZoneEgress",
            f"type: ZoneEgress\nname: ze-a\nzone: zone-a\nnetworking: {{address: 127.0.0.4, port: {ze_port}}}\n",
            "ze-a",
            ze_admin,
        )
        with running(backend, web, zi, ze):
            backend.start()
            web.start()
            web.wait_listener(f":{web_out}")

            # the client's EDS: zone-b is the local egress's address, not the remote ingress's
            def remote_group() -> list[dict[str, object]]:
                return [
                    g
                    for g in _eds(web.admin_port, "backend")
                    if g.get("locality", {}).get("zone") == "zone-b"
                ]  # type: ignore[union-attr]

            (group,) = wait_for(remote_group, 30, what="zone-b in the client's EDS")
            assert [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]] == [  # type: ignore[index]
                {"address": "127.0.0.4", "port_value": ze_port}
            ]

            # cross-zone: client sidecar -> egress -> ingress -> backend sidecar, with the client's identity
            def call() -> httpx.Response | None:
                try:
                    resp = httpx.get(f"http://127.0.0.1:{web_out}/", timeout=5)
                except httpx.HTTPError:
                    return None
                return resp if resp.status_code == 200 else None

            resp = wait_for(call, 40, what="web -> backend in zone-b through the egress")
            body = resp.json()
            assert body["instance"] == "backend-zone-b"
            assert "URI=spiffe://default/web" in body["caller"]
            assert _stat(web.admin_port, "cluster.backend.upstream_cx_total") >= 1
            assert _stat(ze_admin, "tcp.egress_default_backend.downstream_cx_total") >= 1
            assert _stat(zi_admin, "tcp.default_backend.downstream_cx_total") >= 1  # then the ingress
            assert (
                _stat(backend.admin_port, f"http.inbound_{b_port}.downstream_rq_2xx") >= 1
            )  # and the backend
            # the egress passes it through: no certificate on that chain, the ingress holds none at all
            listeners = httpx.get(
                f"http://127.0.0.1:{ze_admin}/config_dump?resource=dynamic_listeners", timeout=5
            ).text
            assert "backend{mesh=default}" in listeners

            # external: client sidecar -> egress (mTLS ends here) -> the service
            def ext_call() -> httpx.Response | None:
                try:
                    resp = httpx.get(f"http://127.0.0.1:{ext_out}/", timeout=5)
                except httpx.HTTPError:
                    return None
                return resp if resp.status_code == 200 else None

            ext = wait_for(ext_call, 40, what="web -> outside through the egress")
            assert ext.json()["instance"] == "outside"
            assert _stat(ze_admin, "http.egress_default_mes_outside.downstream_rq_total") >= 1
            assert _stat(ze_admin, "cluster.default_mes_outside.upstream_rq_total") >= 1
            assert ext.json()["caller"] == ""  # the external service is outside the mesh: no mesh identity

            # the egress is inspectable from the control plane
            inspected = cp.http.get("/zoneegresses/ze-a/_config").json()
            routes = {r["cluster"]: r for r in inspected["routes"]}
            assert (
                routes["default:backend"]["zones"] == ["zone-b"]
                and not routes["default:backend"]["terminate"]
            )
            assert routes["default:mes:outside"]["terminate"]
            shown = _cli(cp, "inspect", "zoneegress", "ze-a")
            assert "backend{mesh=default} -> backend (passthrough, zones zone-b)" in shown
            assert f"127.0.0.3:{zi_port} weight 1 zone zone-b" in shown
            assert "-> MeshExternalService outside (terminates mTLS" in shown
            shown = _cli(cp, "inspect", "zoneingress", "zi-b")
            assert "backend{mesh=default} -> backend (passthrough, zones zone-b)" in shown

            # the client's clusters per zone, and explain: zone-b (the only zone serving it) through ze-a then zi-b
            zones = cp.http.get("/meshes/default/dataplanes/web/_zones").json()
            (backend_zones,) = [c["zones"] for c in zones["clusters"] if c["cluster"] == "backend"]
            assert [(z["zone"], z["priority"], z["via"]) for z in backend_zones] == [
                (
                    "zone-b",
                    0,
                    {"type": "egress", "egresses": ["ze-a"], "ingresses": ["zi-b"]},
                )  # no local instance
            ]
            assert "zone zone-b: priority 0, weight 1" in _cli(cp, "inspect", "dataplane", "web", "--zones")
            assert "egress ze-a -> ingress zi-b" in _cli(cp, "explain", "--from", "web", "--to", "backend")
