"""Names the mesh generates, end to end: a MeshService generated from a Dataplane gets a VIP and a hostname, a
client sidecar reaches it by VIP:port and by the hostname its data plane's DNS answers (Envoy's DNS filter,
``dp run --dns-port``), and a MeshExternalService is reached through the mesh.

Each test runs in a network namespace of its own (the test's thread unshares one; every process it starts lives
there) whose loopback holds the virtual range 240.0.0.0/4, as a workload's namespace would.
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, running, wait_for

pytestmark = pytest.mark.e2e
CLONE_NEWNET = 0x40000000

MESH = """
type: Mesh
name: default
meshServices:
  mode: Exclusive
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""


@contextmanager
def own_network() -> Iterator[None]:
    """Move this thread (and what it starts) into a new network namespace with 240.0.0.0/4 local on lo."""
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(original)
        pytest.skip("creating a network namespace needs CAP_SYS_ADMIN")
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "route", "add", "local", "240.0.0.0/4", "dev", "lo"], check=True)
        yield
    finally:
        libc.setns(original, CLONE_NEWNET)
        os.close(original)


def dns_query(port: int, name: str, qtype: int = 1) -> tuple[int, list[str]]:
    """(rcode, A addresses) of a UDP query to 127.0.0.1:port, the packet built by hand (RFC 1035)."""
    ident = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(packet, ("127.0.0.1", port))
        data, _ = sock.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    assert rid == ident
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _, _, length = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += length
    return flags & 0xF, addresses


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1


def _get(cp: ControlPlane, path: str) -> dict[str, Any]:
    resp = cp.http.get(path)
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


def _resolved(port: int, name: str) -> list[str]:
    rcode, addresses = dns_query(port, name)
    return addresses if rcode == 0 else []


@pytest.fixture
def netns() -> Iterator[None]:
    with own_network():
        yield


def test_generated_meshservice_reached_by_vip_and_hostname(tmp_path: Path, netns: None) -> None:
    cp = ControlPlane(tmp_path).start()
    backend_app = App(tmp_path, "backend", instance="backend-1").start()
    external_app = App(tmp_path, "httpbin", instance="external-1").start()
    inbound = free_port()
    dns = free_port()
    with running(cp, backend_app, external_app):
        cp.apply(MESH)
        backend = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound}
    servicePort: {backend_app.port}
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
""",
        ).start()
        client = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {free_port()}
    tags:
      kuma.io/service: client
""",
            extra_args=("--dns-port", str(dns)),
        ).start()
        with running(backend, client):
            # the control plane generates MeshService backend, with a VIP from 241.0.0.0/8 and Kuma's hostname
            def generated() -> dict[str, Any] | None:
                ms = _get(cp, "/meshes/default/meshservices/backend")
                status = ms.get("status") or {}
                return ms if status.get("vips") and status.get("addresses") else None

            ms = wait_for(generated, 30, what="MeshService backend with a VIP and a hostname")
            assert ms["labels"]["kuma.io/managed-by"] == "meshservice-generator"
            assert ms["spec"]["ports"] == [
                {"name": str(inbound), "port": inbound, "targetPort": inbound, "appProtocol": "http"}
            ]
            vip = ms["status"]["vips"][0]["ip"]
            assert vip.startswith("241.")
            assert [a["hostname"] for a in ms["status"]["addresses"]] == ["backend.svc.mesh.local"]

            # by VIP:port, through the client's sidecar (mTLS to the backend's)
            client.wait_listener(f"outbound:{vip}:{inbound}")
            body = wait_for(
                lambda: httpx.get(f"http://{vip}:{inbound}/", timeout=3).json(), 30, what="backend by VIP"
            )
            assert body["service"] == "backend"

            # by hostname, resolved by the client's data-plane DNS
            assert wait_for(lambda: _resolved(dns, "backend.svc.mesh.local"), 30, what="DNS") == [vip]
            rcode, _ = dns_query(dns, "nothing-here.svc.mesh.local")
            assert rcode == 3  # NXDOMAIN
            resp = httpx.get(
                f"http://{vip}:{inbound}/", headers={"host": f"backend.svc.mesh.local:{inbound}"}, timeout=3
            )
            assert resp.json()["service"] == "backend"

            # a MeshExternalService: a VIP from 242.0.0.0/8, its hostname, reached through the client's Envoy
            cp.apply(
                f"""
type: MeshExternalService
mesh: default
name: httpbin
spec:
  match:
    type: HostnameGenerator
    port: 80
    protocol: http
  endpoints:
  - address: 127.0.0.1
    port: {external_app.port}
"""
            )
            ext_vip = wait_for(
                lambda: _resolved(dns, "httpbin.extsvc.mesh.local"), 30, what="MeshExternalService in DNS"
            )[0]
            assert ext_vip.startswith("242.")
            body = wait_for(
                lambda: httpx.get(f"http://{ext_vip}:80/", timeout=3).json(), 30, what="external by VIP"
            )
            assert body["instance"] == "external-1"

            # the VIP is kept in the store: after a restart of the control plane it is the same
            cp.stop()
            cp.start()
            again = _get(cp, "/meshes/default/meshservices/backend")
            assert again["status"]["vips"] == [{"ip": vip}]


def test_explicit_backendref_outbound(tmp_path: Path, netns: None) -> None:
    cp = ControlPlane(tmp_path).start()
    backend_app = App(tmp_path, "backend", instance="backend-1").start()
    inbound = free_port()
    outbound = free_port()
    with running(cp, backend_app):
        cp.apply(MESH)
        cp.apply(
            """
type: MeshService
mesh: default
name: api
spec:
  selector:
    dataplaneRef:
      name: backend-1
  ports:
  - name: web
    port: 8080
    targetPort: web
    appProtocol: http
"""
        )
        backend = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound}
    name: web
    servicePort: {backend_app.port}
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
""",
        ).start()
        client = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {free_port()}
    tags:
      kuma.io/service: client
  outbound:
  - port: {outbound}
    backendRef:
      kind: MeshService
      name: api
      port: 8080
""",
        ).start()
        with running(backend, client):
            client.wait_listener(f"outbound:127.0.0.1:{outbound}")
            body = wait_for(
                lambda: httpx.get(f"http://127.0.0.1:{outbound}/", timeout=3).json(), 30, what="api"
            )
            assert body["service"] == "backend"
