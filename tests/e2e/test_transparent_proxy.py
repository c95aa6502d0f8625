"""``isthmus dp run --transparent-proxy`` end to end, in two network namespaces the test creates.

Namespace A (the test's thread moves into a fresh one) holds the control plane, the ``backend`` service and its
sidecar; namespace B (held by a ``sleep`` started with ``unshare -n``) is a workload's: the ``client``
application and its transparent sidecar, whose agent installs the iptables rules there. A veth pair joins them
(A 10.77.0.1, B 10.77.0.2, B's default route through A). The client application uses no explicit outbound: it
connects to the MeshService's VIP, to ``backend.mesh`` resolved by its system resolver (redirected to the data
plane's DNS), and to an address outside the mesh (passed through, or closed with passthrough false); the backend
reaches the client's inbound through the inbound redirection. Needs root (skipped otherwise).
"""

from __future__ import annotations

import ctypes
import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
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
A_ADDRESS, B_ADDRESS = "10.77.0.1", "10.77.0.2"

MESH = """
type: Mesh
name: default
meshServices: {mode: Everywhere}
networking: {outbound: {passthrough: %s}}
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""
ALLOW_ALL = """
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""
ONLY_SOMEONE_ELSE = """
type: MeshTrafficPermission
mesh: default
name: backend-callers
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
  - targetRef: {kind: MeshService, name: someone-else}
    default: {action: Allow}
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class Namespaces:
    """The test thread's namespace A, and B held by a process; :meth:`inside_b` runs a block (and the processes
    it starts) in B."""

    def __init__(self, a: str, holder: subprocess.Popen[bytes]) -> None:
        self.a = a
        self.holder = holder
        self.b = f"/proc/{holder.pid}/ns/net"

    @contextmanager
    def inside_b(self) -> Iterator[None]:
        _setns(self.b)
        try:
            yield
        finally:
            _setns(self.a)


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[Namespaces]:
    if os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("unshare") is None:
        pytest.skip("transparent proxying needs root, iptables and unshare")
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    if _libc.unshare(CLONE_NEWNET) != 0:
        os.close(original)
        pytest.skip("creating a network namespace needs CAP_SYS_ADMIN")
    a = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    try:
        own = os.readlink(a)
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != own, 10, what="namespace B")
        keep_a = os.open(
            a, os.O_RDONLY
        )  # this thread's namespace, by a path that does not depend on the thread
        spaces = Namespaces(f"/proc/self/fd/{keep_a}", holder)
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "isthmus-a", "type", "veth", "peer", "name", "isthmus-b")
        run("ip", "link", "set", "isthmus-b", "netns", str(holder.pid))
        run("ip", "addr", "add", f"{A_ADDRESS}/24", "dev", "isthmus-a")
        run("ip", "link", "set", "isthmus-a", "up")
        with spaces.inside_b():
            run("ip", "link", "set", "lo", "up")
            run("ip", "addr", "add", f"{B_ADDRESS}/24", "dev", "isthmus-b")
            run("ip", "link", "set", "isthmus-b", "up")
            run("ip", "route", "add", "default", "via", A_ADDRESS)
        yield spaces
        os.close(keep_a)
    finally:
        holder.kill()
        holder.wait()
        _libc.setns(original, CLONE_NEWNET)
        os.close(original)


def run(*args: str) -> None:
    subprocess.run(list(args), check=True)


class Outside(http.server.BaseHTTPRequestHandler):
    """A server outside the mesh (namespace A), for passthrough."""

    def do_GET(self) -> None:
        body = b"outside the mesh"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _isthmus_rules() -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "ISTHMUS" in line]


def _stat(admin: str, name: str) -> int:
    """A counter of the Envoy (Envoy writes ':' of names as '_' in stat names)."""
    text = httpx.get(f"{admin}/stats", params={"filter": f"^{name}$"}, timeout=3).text.strip()
    return int(text.rsplit(":", 1)[1]) if text else 0


def test_transparent_proxy(tmp_path: Path, namespaces: Namespaces) -> None:
    cp = ControlPlane(tmp_path)
    # the client's agent and Envoy reach the control plane from namespace B, at 10.77.0.1
    cp.extra_args = (
        "--api-tls-address",
        f"0.0.0.0:{cp.api_tls_port}",
        "--xds-address",
        f"0.0.0.0:{cp.xds_port}",
    )
    tls_port = cp.api_tls_port
    cp.start()
    backend_app = App(tmp_path, "backend", instance="backend-1").start()
    backend_port, to_client = free_port(), free_port()
    outside = http.server.ThreadingHTTPServer((A_ADDRESS, 0), Outside)  # a socket of namespace A
    threading.Thread(target=outside.serve_forever, daemon=True).start()
    outside_url = f"http://{A_ADDRESS}:{outside.server_address[1]}/"
    work = Path(tempfile.mkdtemp(prefix="isthmus-tp-"))  # Envoy's user must reach it (pytest's tmp is root's)
    with running(cp, backend_app):
        cp.apply(MESH % "true")
        cp.apply(ALLOW_ALL)
        with namespaces.inside_b():
            client_app = App(tmp_path, "client", instance="client-1").start()
        backend = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: backend-1
networking:
  address: {A_ADDRESS}
  inbound:
  - port: {backend_port}
    servicePort: {backend_app.port}
    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}
  outbound:
  - port: {to_client}
    tags: {{kuma.io/service: client}}
""",
        ).start()
        token = tmp_path / "client-token"
        token.write_text(cp.dataplane_token("default", "client-1"))
        client = Sidecar(
            tmp_path,
            cp,
            f"""
type: Dataplane
mesh: default
name: client-1
networking:
  address: {B_ADDRESS}
  inbound:
  - port: {client_app.port}
    tags: {{kuma.io/service: client, kuma.io/protocol: http}}
""",
            cp_address=f"https://{A_ADDRESS}:{tls_port}",
            verify=False,
            token=False,
            extra_args=("--dataplane-token-file", str(token), "--transparent-proxy", "--redirect-dns"),
        )
        client.work = work
        with namespaces.inside_b():
            client.start()
        try:
            with running(client_app, backend, client):
                _exercise(cp, namespaces, backend, client, backend_port, to_client, client_app, outside_url)
                # the agent stops: its rules go with it, and traffic flows as before
                client.stop()
                with namespaces.inside_b():
                    assert _isthmus_rules() == []
                    assert httpx.get(outside_url, timeout=3).text == "outside the mesh"
        except AssertionError as exc:
            logs = "\n".join(
                f"--- {p.name} ---\n{p.proc.log()[-3000:]}" for p in (client, backend) if p.proc is not None
            )
            envoy_log = work / "envoy.log"
            tail = envoy_log.read_text()[-3000:] if envoy_log.exists() else ""
            raise AssertionError(f"{exc}\n{logs}\n--- client envoy ---\n{tail}") from None
        finally:
            outside.shutdown()
            shutil.rmtree(work, ignore_errors=True)


def _exercise(
    cp: ControlPlane,
    namespaces: Namespaces,
    backend: Sidecar,
    client: Sidecar,
    backend_port: int,
    to_client: int,
    client_app: App,
    outside_url: str,
) -> None:
    def generated() -> str | None:
        resp = cp.http.get("/meshes/default/meshservices/backend")
        ms = resp.json() if resp.status_code == 200 else {}
        vips = (ms.get("status") or {}).get("vips") or []
        return str(vips[0]["ip"]) if vips else None

    vip = wait_for(generated, 30, what="MeshService backend's VIP")
    assert vip is not None

    # the control plane knows the client as a transparent proxy (the agent gave its Dataplane Kuma's fields)
    def registered() -> Any:
        resp = cp.http.get("/meshes/default/dataplanes/client-1")
        return resp.json()["networking"]["transparentProxying"] if resp.status_code == 200 else None

    tproxy = wait_for(registered, 30, what="client-1 registered")
    assert tproxy == {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    backend.wait_listener(f"outbound:127.0.0.1:{to_client}")

    with namespaces.inside_b():
        client.wait_listener("outbound:passthrough:ipv4")
        client.wait_listener(f"outbound:{vip}:{backend_port}")
        rules = _isthmus_rules()
        assert "-A OUTPUT -p tcp -j ISTHMUS_OUTBOUND" in rules
        assert "-A ISTHMUS_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules
        assert "-A ISTHMUS_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules
        assert "-A OUTPUT -p udp -m udp --dport 53 -j ISTHMUS_DNS" in rules

        # by the MeshService's VIP, with no outbound declared: through Envoy, mTLS with the client's identity
        body = wait_for(lambda: httpx.get(f"http://{vip}:{backend_port}/", timeout=3).json(), 30, what="VIP")
        assert body["service"] == "backend"
        assert "URI=spiffe://default/client" in body["caller"]

        # by name: the system resolver's query (udp/53) goes to the data plane's DNS
        legacy = wait_for(lambda: socket.gethostbyname("backend.mesh"), 30, what="backend.mesh resolved")
        assert legacy.startswith("240.")
        assert socket.gethostbyname("backend.svc.mesh.local") == vip
        resp = httpx.get(f"http://{legacy}:80/", headers={"host": "backend.mesh"}, timeout=3)
        assert resp.json()["service"] == "backend"
        assert "URI=spiffe://default/client" in resp.json()["caller"]

        # a destination outside the mesh is passed through Envoy to where it was going
        before = _stat(client.admin, r"cluster\.outbound_passthrough_ipv4\.upstream_cx_total")
        assert httpx.get(outside_url, timeout=3).text == "outside the mesh"
        assert _stat(client.admin, r"cluster\.outbound_passthrough_ipv4\.upstream_cx_total") == before + 1

    # inbound: the backend reaches the client's inbound (10.77.0.2:port, which only Envoy answers: the
    # application listens on B's loopback) through the inbound redirection
    body = wait_for(lambda: httpx.get(f"http://127.0.0.1:{to_client}/", timeout=3).json(), 30, what="inbound")
    assert body["service"] == "client"
    assert "URI=spiffe://default/backend" in body["caller"]

    # permissions apply by identity: only someone-else may call the backend now
    cp.apply(ONLY_SOMEONE_ELSE)
    with namespaces.inside_b():
        wait_for(
            lambda: httpx.get(f"http://{vip}:{backend_port}/", timeout=3).status_code == 403, 30, what="403"
        )

    # passthrough false: destinations outside the mesh are closed
    cp.apply(MESH % "false")
    with namespaces.inside_b():
        client.wait_listener("outbound:passthrough:ipv4")

        def refused() -> bool:
            try:
                httpx.get(outside_url, timeout=3)
            except httpx.TransportError:
                return True
            return False

        wait_for(refused, 30, what="passthrough false closes the connection")
