"""A gateway proxy end to end: a real control plane, ``isthmus dp run --proxy-type gateway`` (real Envoys), real
upstream servers, Kong's configuration made through the Admin API."""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

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
ONLY_EDGE = """type: MeshTrafficPermission
mesh: default
name: only-edge
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: edge}
    default: {action: Allow}
"""
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def gateway_dataplane(name: str, outbounds: tuple[tuple[int, str], ...] = ()) -> str:
    out = "".join(f"\n  - port: {p}\n    tags:\n      kuma.io/service: {s}" for p, s in outbounds)
    return f"""type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  gateway:
    type: DELEGATED
    tags:
      kuma.io/service: edge
  outbound:{out or " []"}
"""


class Gateway:
    """``isthmus dp run --proxy-type gateway`` with a data-plane token, verifying the control plane."""

    def __init__(
        self,
        tmp: Path,
        cp: ControlPlane,
        name: str,
        workspace: str = "default",
        tls: bool = False,
        outbounds: tuple[tuple[int, str], ...] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
        self.tls_port = free_port()
        self.admin_port = free_port()
        self.file = tmp / f"gw-{name}.yaml"
        self.file.write_text(gateway_dataplane(name, outbounds))
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
            str(self.file),
            "--proxy-listen",
            f"127.0.0.1:{self.port}",
            *(("--proxy-listen-tls", f"127.0.0.1:{self.tls_port}") if tls else ()),
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
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def start(self) -> Gateway:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlane, httpx.Client, App, App, Path]]:
    tmp = tmp_path_factory.mktemp("gateway-proxy")
    cp = ControlPlane(tmp).start()
    alpha = App(tmp, "alpha").start()
    beta = App(tmp, "beta").start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    try:
        cp.apply(MESH)
        yield cp, kong, alpha, beta, tmp
    finally:
        kong.close()
        beta.stop()
        alpha.stop()
        cp.stop()


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def _json(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


def _identities(secrets: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for secret in secrets:
        source = secret.get("tlsCertificate", {}).get("certificateChain", {})
        pem = source["inlineString"].encode() if "inlineString" in source else base64.b64decode(source.get("inlineBytes", ""))  # fmt: skip
        if pem:
            for cert in x509.load_pem_x509_certificates(pem):
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                found.update(san.get_values_for_type(x509.UniformResourceIdentifier))
    return found


def _serves(gw: Gateway, path: str, service: str) -> Callable[[], bool]:
    def check() -> bool:
        response = gw.get(path)
        return response.status_code == 200 and _json(response)["service"] == service

    return check


def test_gateway_serves_kong_configuration(setup: tuple[ControlPlane, httpx.Client, App, App, Path]) -> None:
    cp, kong, alpha, beta, tmp = setup
    _created(kong.put("/services/alpha", json={"url": f"http://127.0.0.1:{alpha.port}/base"}))
    _created(kong.put("/services/beta", json={"url": f"http://127.0.0.1:{beta.port}"}))
    _created(kong.put("/services/alpha/routes/api", json={"paths": ["/api"]}))
    _created(kong.put("/services/beta/routes/all", json={"paths": ["/"]}))
    _created(kong.put("/services/alpha/routes/by-host", json={"hosts": ["shop.example.com"], "paths": ["/"]}))
    first = Gateway(tmp, cp, "edge-1").start()
    second = Gateway(tmp, cp, "edge-2").start()
    try:
        # strip_path: /api/items reaches alpha as /base/items (Kong's v0 join with the service path)
        wait_for(lambda: first.get("/api/items").status_code == 200, 60, what="gateway serving /api")
        body = _json(first.get("/api/items"))
        assert (body["service"], body["path"]) == ("alpha", "/base/items")
        assert _json(first.get("/api"))["path"] == "/base"
        # normalisation before routing, as Kong: /x/../api/a -> /api/a
        assert _json(first.get("/x/../api/a"))["path"] == "/base/a"
        decoded = _json(first.get("/%61pi//b"))  # unreserved octets decoded, slashes merged
        assert decoded["path"] == "/base/b"
        if "headers" in decoded:  # Envoy's own request headers are not sent upstream (Kong sends none such)
            assert not [h for h in decoded["headers"] if h.startswith("x-envoy-original")], decoded["headers"]
            # Kong's X-Real-IP, X-Forwarded-Port and X-Forwarded-Host (the client's Host; with its port, unlike Kong)
            assert decoded["headers"]["x-real-ip"] == "127.0.0.1"
            assert decoded["headers"]["x-forwarded-port"] == str(first.port)
            assert decoded["headers"]["x-forwarded-host"] == f"127.0.0.1:{first.port}"
        # the catch-all "/" route (beta); a host-specific route wins over it (Kong: more fields, plain host)
        other = _json(first.get("/other"))
        assert (other["service"], other["path"]) == ("beta", "/other")
        by_host = _json(first.get("/other", headers={"Host": "shop.example.com"}))
        assert (by_host["service"], by_host["path"]) == ("alpha", "/base/other")
        # the proxy's configuration: Kong's listener over its mesh part, which holds the identity of `edge`
        config = cp.http.get("/meshes/default/dataplanes/edge-1/_config").json()
        assert f"kong:http:127.0.0.1:{first.port}" in [x["name"] for x in config["xds"][LISTENER]]
        assert "spiffe://default/edge" in _identities(config["xds"][SECRET])
        # both gateway processes of the workspace serve the same configuration
        wait_for(lambda: second.get("/api/items").status_code == 200, 60, what="second gateway")
        assert _json(second.get("/api/items"))["path"] == "/base/items"
        # a change through the Admin API reaches both gateways without a restart
        _created(kong.patch("/routes/api", json={"paths": ["/v2"], "strip_path": False}))
        for gw in (first, second):
            wait_for(_serves(gw, "/v2/items", "alpha"), 20, what=f"PATCHed route on {gw.name}")
            moved = _json(gw.get("/v2/items"))
            assert moved["path"] == "/base/v2/items"
            assert _json(gw.get("/api/items"))["service"] == "beta"  # now the catch-all's
        # no route matches: Kong's 404 body
        assert kong.delete("/routes/all").status_code == 204
        wait_for(lambda: first.get("/nothing").status_code == 404, 20, what="catch-all removed")
        missing = first.get("/nothing")
        assert missing.json() == {"message": "no Route matched with those values"}
        assert missing.headers["content-type"].startswith("application/json")
    finally:
        second.stop()
        first.stop()


def test_gateway_needs_a_gateway_dataplane_and_a_listen_address(
    setup: tuple[ControlPlane, httpx.Client, App, App, Path],
) -> None:
    cp, _, _, _, tmp = setup
    sidecar_file = tmp / "not-gateway.yaml"
    sidecar_file.write_text(
        "type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: web\n"
    )
    import subprocess

    base = [*ISTHMUS, "dp", "run", "--proxy-type", "gateway", "--cp-address", cp.url, "--admin-port", "0"]
    proc = subprocess.run(
        [*base, "--dataplane-file", str(sidecar_file), "--proxy-listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "the Dataplane needs networking.gateway" in proc.stderr
    # without --proxy-listen a gateway runs in delegated mode (tests/e2e/test_gateway_delegated.py)


def _self_signed(name: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def _served_name(port: int, sni: str | None) -> str | None:
    """The common name of the certificate the listener presents for ``sni``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_gateway_tls_listener(setup: tuple[ControlPlane, httpx.Client, App, App, Path]) -> None:
    cp, kong, alpha, _, tmp = setup
    _created(kong.put("/services/alpha-tls", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(
        kong.put("/services/alpha-tls/routes/secure", json={"paths": ["/secure"], "protocols": ["https"]})
    )
    for name in ("one.example.com", "two.example.com"):
        cert, key = _self_signed(name)
        _created(kong.post("/certificates", json={"cert": cert, "key": key, "snis": [name]}))
    gw = Gateway(tmp, cp, "edge-tls", tls=True).start()
    try:
        wait_for(
            lambda: _served_name(gw.tls_port, "two.example.com") == "two.example.com", 60, what="TLS listener"
        )
        assert _served_name(gw.tls_port, "one.example.com") == "one.example.com"
        # another name gets the oldest certificate (created_at has seconds: both may be as old, then by id)
        assert _served_name(gw.tls_port, "other.example.com") in ("one.example.com", "two.example.com")
        # the https-only route: proxied over TLS, 426 with Kong's body over plain HTTP
        with httpx.Client(base_url=f"https://127.0.0.1:{gw.tls_port}", verify=False, timeout=5) as client:
            body = client.get("/secure/x").json()
        assert (body["service"], body["path"]) == ("alpha", "/x")
        plain = gw.get("/secure/x")
        assert plain.status_code == 426 and plain.json() == {"message": "Please use HTTPS protocol"}
    finally:
        gw.stop()


def test_gateway_reaches_a_mesh_service_over_mtls_with_its_identity(
    setup: tuple[ControlPlane, httpx.Client, App, App, Path],
) -> None:
    cp, kong, _, _, tmp = setup
    backend_app = App(tmp, "backend", instance="backend-1").start()
    backend = Sidecar(
        tmp,
        cp,
        f"""type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {backend_app.port}
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
""",
    ).start()
    # the backend allows only the gateway's identity
    cp.apply(ONLY_EDGE)
    _created(kong.put("/services/backend", json={"url": "http://backend.mesh/api"}))
    _created(kong.put("/services/backend/routes/backend", json={"paths": ["/backend"]}))
    gw = Gateway(tmp, cp, "edge-mesh", outbounds=((free_port(), "backend"),)).start()
    try:
        wait_for(_serves(gw, "/backend/items", "backend"), 60, what="gateway -> backend over the mesh")
        body = _json(gw.get("/backend/items"))
        assert body["path"] == "/api/items"
        assert "spiffe://default/edge" in body["caller"]  # mTLS with the gateway's identity
    finally:
        gw.stop()
        backend.stop()
        backend_app.stop()


def test_gateway_keeps_serving_across_a_control_plane_restart(
    setup: tuple[ControlPlane, httpx.Client, App, App, Path],
) -> None:
    cp, kong, alpha, beta, tmp = setup
    _created(kong.put("/services/restart", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(kong.put("/services/restart/routes/restart", json={"paths": ["/restart"]}))
    gw = Gateway(tmp, cp, "edge-restart").start()
    try:
        wait_for(_serves(gw, "/restart/x", "alpha"), 60, what="gateway serving /restart")
        cp.stop()
        assert _json(gw.get("/restart/x"))["path"] == "/x"  # Envoy keeps its configuration
        cp.start()
        # the stored Dataplane's labels tell the new control plane what the gateway serves
        _created(kong.put("/services/restart", json={"url": f"http://127.0.0.1:{beta.port}"}))
        wait_for(_serves(gw, "/restart/x", "beta"), 60, what="change after the restart")
    finally:
        gw.stop()
