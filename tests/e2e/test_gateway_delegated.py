"""Kuma's delegated mode without a workspace: ``isthmus dp run --proxy-type gateway`` with a DELEGATED gateway
Dataplane, ``networking.outbound`` entries and no ``--proxy-listen`` is an Envoy with the gateway's mesh identity
serving only those outbounds on loopback; nginx (Debian's package) in front of it reaches mesh services over mTLS.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, App, ControlPlane, Proc, Sidecar, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (Debian: nginx-light)"),
]

MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: backend-only-edge
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: edge}
    default: {action: Allow}
"""
NGINX_CONF = """daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        # nginx is the API gateway: it authenticates and names the consumer itself
        location /api/ {{
            proxy_pass http://127.0.0.1:{outbound}/;
            proxy_http_version 1.1;  # Envoy answers HTTP/1.0 with 426
            proxy_set_header Host backend.mesh;
            proxy_set_header X-Consumer-Username nginx-user;
        }}
    }}
}}
"""


def delegated_dataplane(outbound: int) -> str:
    return f"""type: Dataplane
mesh: default
name: edge-nginx
networking:
  address: 127.0.0.1
  gateway:
    type: DELEGATED
    tags:
      kuma.io/service: edge
  outbound:
  - port: {outbound}
    tags:
      kuma.io/service: backend
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, int, int, Path]]:
    tmp = tmp_path_factory.mktemp("gateway-delegated")
    cp = ControlPlane(tmp).start()
    items: list[Any] = []
    try:
        cp.apply(MESH)
        app = App(tmp, "backend", instance="backend-1").start()
        items.append(app)
        backend = f"""type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {app.port}
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
"""
        items.append(Sidecar(tmp, cp, backend).start())
        outbound, admin = free_port(), free_port()
        (tmp / "gw.yaml").write_text(delegated_dataplane(outbound))
        (tmp / "token-edge").write_text(cp.dataplane_token("default", "edge-nginx"))
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
            str(tmp / "token-edge"),
            "--dataplane-file",
            str(tmp / "gw.yaml"),
            "--admin-port",
            str(admin),
            "--work-dir",
            str(tmp / "work-edge"),
            "--log-level",
            "warning",
        ]
        items.append(Proc("gw-edge-nginx", args, tmp).start())
        nginx_port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, outbound=outbound))
        nginx = Proc("nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], tmp).start()
        items.append(nginx)
        yield cp, nginx_port, admin, tmp
    finally:
        for item in reversed(items):
            item.stop()
        cp.stop()


def test_nginx_reaches_a_mesh_service_through_a_delegated_gateway(
    setup: tuple[ControlPlane, int, int, Path],
) -> None:
    cp, nginx_port, admin, _ = setup

    def through_nginx() -> bool:
        return httpx.get(f"http://127.0.0.1:{nginx_port}/api/items", timeout=10).status_code == 200

    wait_for(through_nginx, 60, what="nginx -> delegated gateway -> backend")
    body = httpx.get(f"http://127.0.0.1:{nginx_port}/api/items", timeout=10).json()
    assert body["service"] == "backend" and body["path"] == "/items"
    assert (
        "URI=spiffe://default/edge" in body["caller"]
    )  # mTLS with the gateway's identity (MTP allows only it)
    # the delegated gateway is a gateway of the mesh: the backend's sidecar keeps nginx's consumer header
    assert body["headers"]["x-consumer-username"] == "nginx-user"
    # no workspace: the Dataplane has no gateway labels, the Envoy has only its mesh listeners, on loopback
    dataplane = cp.http.get("/meshes/default/dataplanes/edge-nginx").json()
    assert not any(k.startswith("isthmus.io/gateway-") for k in dataplane.get("labels") or {})
    listeners = httpx.get(f"http://127.0.0.1:{admin}/listeners?format=json", timeout=5).json()
    names = [entry["name"] for entry in listeners["listener_statuses"]]
    assert names and all(n.startswith("outbound:127.0.0.1:") for n in names), names
