"""End to end: a control plane, real Envoy sidecars, real upstream servers, real mTLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.e2e.harness import App, ControlPlane, Sidecar, running, wait_for

pytestmark = pytest.mark.e2e

MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: {lifetime}
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

DENY_WEB = """
type: MeshTrafficPermission
mesh: default
name: deny-web-to-backend
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""


def dataplane(
    name: str,
    service: str,
    inbound_port: int,
    app_port: int,
    *,
    protocol: str = "http",
    outbounds: list[tuple[int, str]] = (),
    version: str = "v1",
) -> str:  # type: ignore[assignment]
    out = "".join(f"\n  - port: {p}\n    tags:\n      kuma.io/service: {s}" for p, s in outbounds)
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound_port}
    servicePort: {app_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: {protocol}
      version: {version}
  outbound:{out or " []"}
"""


class Mesh:
    """web (client) -> backend (server), each with a sidecar; the test talks to web's outbound listener."""

    def __init__(self, tmp: Path, lifetime: str = "1h") -> None:
        from tests.conftest import free_port

        self.tmp = tmp
        self.cp = ControlPlane(tmp).start()
        self.cp.apply(MESH.format(lifetime=lifetime))
        self.backend_app = App(tmp, "backend", instance="backend-1").start()
        self.backend_inbound = free_port()
        self.outbound = free_port()
        self.backend = Sidecar(
            tmp, self.cp, dataplane("backend-1", "backend", self.backend_inbound, self.backend_app.port)
        ).start()
        self.web_app_port = free_port()
        self.web = Sidecar(
            tmp,
            self.cp,
            dataplane("web-1", "web", free_port(), self.web_app_port, outbounds=[(self.outbound, "backend")]),
        ).start()
        self.web.wait_listener(f"outbound:127.0.0.1:{self.outbound}")
        self.backend.wait_listener(f"inbound:127.0.0.1:{self.backend_inbound}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.outbound}/"

    def stop(self) -> None:
        for part in (self.web, self.backend, self.backend_app, self.cp):
            part.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def test_allowed_traffic_reaches_backend_and_deny_gets_403(mesh: Mesh) -> None:
    # mTLS on and no permission: denied
    resp = wait_for(
        lambda: get(mesh.url).status_code == 403 and get(mesh.url), 20, what="403 without permission"
    )
    assert resp.status_code == 403
    mesh.cp.apply(ALLOW_ALL)
    ok = wait_for(lambda: (r := get(mesh.url)).status_code == 200 and r, 10, what="200 after allow-all")
    assert ok.json()["service"] == "backend"
    # the backend saw the caller's SPIFFE identity in the forwarded client certificate header
    assert "spiffe://default/web" in ok.json()["caller"]
    applied = time.monotonic()
    mesh.cp.apply(DENY_WEB)
    wait_for(lambda: get(mesh.url).status_code == 403, 5, interval=0.05, what="403 after deny")
    assert time.monotonic() - applied < 5
    mesh.cp.delete("/meshes/default/meshtrafficpermissions/deny-web-to-backend")
    wait_for(lambda: get(mesh.url).status_code == 200, 5, what="200 after deny removed")


def test_client_without_mesh_certificate_is_refused(mesh: Mesh) -> None:
    mesh.cp.apply(ALLOW_ALL)
    wait_for(lambda: get(mesh.url).status_code == 200, 10, what="mesh traffic")
    # plaintext straight to the inbound: refused
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{mesh.backend_inbound}/", timeout=3)
    # TLS without a client certificate: the handshake is completed by the server's alert, no HTTP answer
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection(("127.0.0.1", mesh.backend_inbound), timeout=3) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = tls.recv(1024)
                if not data:
                    raise ConnectionError("closed")


def test_inbound_presents_spiffe_certificate(mesh: Mesh) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def peer_cert() -> bytes:
        with socket.create_connection(("127.0.0.1", mesh.backend_inbound), timeout=3) as raw:
            try:
                with ctx.wrap_socket(raw) as tls:
                    return tls.getpeercert(binary_form=True) or b""
            except ssl.SSLError:
                return b""

    der = wait_for(peer_cert, 10, what="server certificate")
    cert = x509.load_der_x509_certificate(der)
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert "spiffe://default/backend" in uris
    assert "kuma://version/v1" in uris
    assert cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "default"


def test_endpoints_follow_dataplanes(mesh: Mesh) -> None:
    from tests.conftest import free_port

    mesh.cp.apply(ALLOW_ALL)
    wait_for(lambda: get(mesh.url).status_code == 200, 10, what="mesh traffic")
    app2 = App(mesh.tmp, "backend", instance="backend-2").start()
    second = Sidecar(mesh.tmp, mesh.cp, dataplane("backend-2", "backend", free_port(), app2.port)).start()
    with running(app2, second):

        def both() -> bool:
            seen = {get(mesh.url).json()["instance"] for _ in range(20)}
            return seen == {"backend-1", "backend-2"}

        wait_for(both, 30, what="both backend instances")
        second.stop()  # the agent deregisters its Dataplane on SIGTERM
        wait_for(
            lambda: all(get(mesh.url).json()["instance"] == "backend-1" for _ in range(10)),
            15,
            what="only backend-1",
        )


def test_tcp_service_through_mesh(tmp_path: Path) -> None:
    from tests.conftest import free_port

    cp = ControlPlane(tmp_path).start()
    cp.apply(MESH.format(lifetime="1h"))
    cp.apply(ALLOW_ALL)
    echo = App(tmp_path, "db", instance="db-1", tcp=True).start()
    outbound = free_port()
    db = Sidecar(tmp_path, cp, dataplane("db-1", "db", free_port(), echo.port, protocol="tcp")).start()
    client = Sidecar(
        tmp_path,
        cp,
        dataplane(
            "client-1", "client", free_port(), free_port(), protocol="tcp", outbounds=[(outbound, "db")]
        ),
    ).start()
    with running(cp, echo, db, client):
        client.wait_listener(f"outbound:127.0.0.1:{outbound}")

        def roundtrip() -> bytes:
            with socket.create_connection(("127.0.0.1", outbound), timeout=3) as s:
                s.sendall(b"ping")
                return s.recv(100)

        assert wait_for(roundtrip, 20, what="tcp echo") == b"db-1:ping"
        cp.apply(DENY_WEB.replace("backend", "db").replace("name: web", "name: client"))

        def refused() -> bool:
            try:
                return roundtrip() == b""
            except OSError:
                return True

        wait_for(refused, 10, what="tcp connection refused by RBAC")


class Load:
    """Continuous requests in a background thread; counts failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"status {r.status_code}: {r.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_certificate_rotation_drops_no_request(tmp_path: Path) -> None:
    m = Mesh(tmp_path, lifetime="30s")
    try:
        m.cp.apply(ALLOW_ALL)
        wait_for(lambda: get(m.url).status_code == 200, 15, what="mesh traffic")
        first = m.cp.insight("default", "backend-1")["mTLS"]
        with Load(m.url) as load:
            time.sleep(60)
        last = m.cp.insight("default", "backend-1")["mTLS"]
        assert last["certificateRegenerations"] >= first["certificateRegenerations"] + 2
        assert last["certificateExpirationTime"] != first["certificateExpirationTime"]
        assert load.failed == []
        assert load.ok > 500
    finally:
        m.stop()


def test_control_plane_restart_loses_no_request(mesh: Mesh) -> None:
    mesh.cp.apply(ALLOW_ALL)
    wait_for(lambda: get(mesh.url).status_code == 200, 10, what="mesh traffic")
    before = {n: len(mesh.cp.insight("default", n)["subscriptions"]) for n in ("web-1", "backend-1")}
    with Load(mesh.url) as load:
        time.sleep(2)
        mesh.cp.stop()
        time.sleep(3)  # Envoys serve on their last config while the control plane is away
        mesh.cp.start()
        for name in ("web-1", "backend-1"):
            wait_for(lambda n=name: mesh.cp.insight("default", n)["online"], 30, what=f"{name} reconnected")  # type: ignore[misc]
        time.sleep(2)
    assert load.failed == []
    assert load.ok > 100
    # the store kept everything: the dataplanes and the permission are still there after the restart
    assert mesh.cp.http.get("/meshes/default/meshtrafficpermissions/allow-all").status_code == 200
    assert before  # subscriptions were recorded before the restart
