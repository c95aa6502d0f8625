"""End to end: changing a mesh's CA under continuous traffic between two real Envoy sidecars, and no private key
of any kind in what the REST API serves.

The client sidecar reaches an HTTP service (kept-alive upstream connections) and a TCP service (one new
upstream connection, so one new mTLS handshake between the sidecars, per round trip). The mesh switches from
its built-in CA ``ca-1`` to a provided RSA CA ``ca-2`` read from files; not one request may fail, and afterwards
the sidecars present certificates of ``ca-2`` and trust nothing else.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from isthmus.catalog import default_registry
from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, wait_for

pytestmark = pytest.mark.e2e

MIN_REQUESTS = 10_000

MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: {enabled}
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 1h
  - name: ca-2
    type: provided
    dpCert:
      rotation:
        expiration: 1h
    conf:
      cert:
        file: {cert}
      key:
        file: {key}
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


def server_dataplane(http_port: int, http_app: int, tcp_port: int, tcp_app: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: server-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {http_port}
    servicePort: {http_app}
    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}
  - port: {tcp_port}
    servicePort: {tcp_app}
    tags: {{kuma.io/service: db, kuma.io/protocol: tcp}}
"""


def client_dataplane(inbound: int, http_out: int, tcp_out: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound}
    servicePort: {free_port()}
    tags: {{kuma.io/service: client, kuma.io/protocol: http}}
  outbound:
  - port: {http_out}
    tags: {{kuma.io/service: backend}}
  - port: {tcp_out}
    tags: {{kuma.io/service: db}}
"""


def corporate_ca(directory: Path, mesh: str = "default") -> tuple[x509.Certificate, Path, Path]:
    """A CA as an organisation would bring it: RSA, self-signed, with the mesh's SPIFFE trust domain."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, "corp mesh CA"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"corp-ca-{mesh}.crt", directory / f"corp-ca-{mesh}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert, cert_file, key_file


def presented_certificate(port: int) -> x509.Certificate | None:
    """The certificate an inbound presents in a TLS handshake (the connection then fails: we have no client
    certificate, which is the point of mTLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError):
            return None
    return x509.load_der_x509_certificate(der) if der else None


def trusted_and_presented(sidecar: Sidecar) -> tuple[set[int], list[x509.Certificate]]:
    """The serial numbers of the CAs a sidecar trusts and the certificates it presents, from the SDS secrets
    it has accepted (Envoy's config dump: the CA bundle in full, the private key redacted by Envoy)."""
    doc = httpx.get(f"{sidecar.admin}/config_dump?resource=dynamic_active_secrets", timeout=3).json()
    trusted: set[int] = set()
    presented: list[x509.Certificate] = []
    for entry in doc.get("configs", []):
        secret = entry.get("secret", {})
        bundle = secret.get("validation_context", {}).get("trusted_ca", {}).get("inline_string")
        if bundle:
            trusted |= {c.serial_number for c in x509.load_pem_x509_certificates(bundle.encode())}
        chain = secret.get("tls_certificate", {}).get("certificate_chain", {}).get("inline_string")
        if chain:
            presented.extend(x509.load_pem_x509_certificates(chain.encode()))
    return trusted, presented


class Watch:
    """Samples what a sidecar trusts and presents, as fast as its admin API answers, keeping each change."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.states: list[tuple[set[int], x509.Name | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cas, presented = trusted_and_presented(self.sidecar)
            except (httpx.HTTPError, ValueError):
                continue
            state = (cas, presented[0].issuer if presented else None)
            if not self.states or self.states[-1] != state:
                self.states.append(state)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Traffic:
    """Continuous HTTP requests (kept-alive) and TCP round trips (a new mTLS handshake each), counting
    failures."""

    def __init__(self, http_url: str, tcp_port: int) -> None:
        self.http_url = http_url
        self.tcp_port = tcp_port
        self.http_ok = 0
        self.tcp_ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._http, daemon=True),
            threading.Thread(target=self._tcp, daemon=True),
        ]

    @property
    def total(self) -> int:
        return self.http_ok + self.tcp_ok

    def _http(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.http_url)
                    if r.status_code == 200 and r.json()["service"] == "backend":
                        self.http_ok += 1
                    else:
                        self.failed.append(f"http status {r.status_code}: {r.text[:200]}")
                except (httpx.HTTPError, ValueError) as exc:
                    self.failed.append(f"http {exc!r}")

    def _tcp(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as s:
                    s.sendall(b"ping")
                    data = b""
                    while len(data) < len(b"db-1:ping"):
                        chunk = s.recv(100)
                        if not chunk:
                            break
                        data += chunk
                if data == b"db-1:ping":
                    self.tcp_ok += 1
                else:
                    self.failed.append(f"tcp answer {data!r}")
            except OSError as exc:
                self.failed.append(f"tcp {exc!r}")

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.corp_ca, self.cert_file, self.key_file = corporate_ca(tmp)
        self.cp = ControlPlane(tmp, extra_args=("--log-level", "info")).start()
        self.parts: list[Any] = [self.cp]
        self.cp.apply(self.mesh("ca-1"))
        self.cp.apply(ALLOW_ALL)
        self.backend_app = self._start(App(tmp, "backend", instance="backend-1"))
        self.db_app = self._start(App(tmp, "db", instance="db-1", tcp=True))
        self.http_inbound, self.tcp_inbound = free_port(), free_port()
        self.http_out, self.tcp_out = free_port(), free_port()
        self.server = self._start(
            Sidecar(
                tmp,
                self.cp,
                server_dataplane(
                    self.http_inbound, self.backend_app.port, self.tcp_inbound, self.db_app.port
                ),
            )
        )
        self.client = self._start(
            Sidecar(tmp, self.cp, client_dataplane(free_port(), self.http_out, self.tcp_out))
        )
        self.client.wait_listener(f"outbound:127.0.0.1:{self.tcp_out}")
        self.server.wait_listener(f"inbound:127.0.0.1:{self.tcp_inbound}")

    def _start(self, part: Any) -> Any:
        self.parts.append(part)
        return part.start()

    def mesh(self, enabled: str) -> str:
        return MESH.format(enabled=enabled, cert=self.cert_file, key=self.key_file)

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("ca-change"))
    try:
        yield d
    finally:
        d.stop()


def test_changing_the_mesh_ca_under_traffic_fails_no_request(deployment: Deployment) -> None:
    d = deployment
    http_url = f"http://127.0.0.1:{d.http_out}/"
    wait_for(lambda: httpx.get(http_url, timeout=3).status_code == 200, 30, what="HTTP through the mesh")
    before = wait_for(lambda: presented_certificate(d.tcp_inbound), 10, what="the server's certificate")
    assert (
        before is not None and before.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "default"
    )
    corp = d.corp_ca.serial_number
    old_cas, _ = trusted_and_presented(d.client)
    assert len(old_cas) == 1 and corp not in old_cas
    old_ca = next(iter(old_cas))

    def switched() -> bool:
        """Both sidecars present certificates of the new CA and trust only it."""
        for sidecar in (d.client, d.server):
            cas, presented = trusted_and_presented(sidecar)
            if cas != {corp} or not presented or presented[0].issuer != d.corp_ca.subject:
                return False
        cert = presented_certificate(d.tcp_inbound)
        return cert is not None and cert.issuer == d.corp_ca.subject

    with Traffic(http_url, d.tcp_out) as traffic, Watch(d.client) as client, Watch(d.server) as server:
        wait_for(lambda: traffic.total >= 1000, 60, what="traffic before the switch")
        d.cp.apply(d.mesh("ca-2"))
        wait_for(switched, 120, interval=0.05, what="the CA switch to finish")
        switched_at = traffic.total
        wait_for(
            lambda: traffic.total >= max(MIN_REQUESTS, switched_at + 2000),
            300,
            what=f"{MIN_REQUESTS} requests",
        )
    assert traffic.failed == [], traffic.failed[:10]
    assert traffic.total >= MIN_REQUESTS
    assert traffic.tcp_ok >= 500  # each of them a new mTLS handshake between the sidecars

    # what each sidecar trusted and presented, in order: trust both CAs, then present the new certificate,
    # then trust only the new CA -- never a certificate its peers might not trust yet
    old_cert, new_cert = "old", "new"
    expected = [
        ({old_ca}, old_cert),
        ({old_ca, corp}, old_cert),
        ({old_ca, corp}, new_cert),
        ({corp}, new_cert),
    ]
    for watch in (client, server):
        seen = [(cas, new_cert if issuer == d.corp_ca.subject else old_cert) for cas, issuer in watch.states]
        assert seen[0] == expected[0] and seen[-1] == expected[-1], seen
        assert all(state in expected for state in seen), seen
        assert [expected.index(state) for state in seen] == sorted(expected.index(state) for state in seen)
        assert ({old_ca, corp}, old_cert) in seen or ({old_ca, corp}, new_cert) in seen, seen

    # the inbound's certificate chains to the provided CA: its signature verifies with the CA's key
    after = presented_certificate(d.tcp_inbound)
    assert after is not None
    after.verify_directly_issued_by(d.corp_ca)
    uris = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "spiffe://default/db" in uris.get_values_for_type(x509.UniformResourceIdentifier)
    # ... and the old CA is trusted nowhere any more
    for sidecar in (d.client, d.server):
        cas, presented = trusted_and_presented(sidecar)
        assert cas == {corp}
        presented[0].verify_directly_issued_by(d.corp_ca)


PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_get_endpoint_serves_a_private_key(deployment: Deployment) -> None:
    """Every GET route of the OpenAPI document, with real names filled in, over every listed resource type:
    not one PEM private key (the CA keys stay in the store, the proxy keys in the SDS secrets are redacted)."""
    d = deployment
    http = d.cp.http
    wait_for(lambda: http.get("/meshes/default/dataplanes/server-1/_config").json()["xds"], 20, what="config")
    put = http.put("/meshes/vault", json=inline_key_mesh(d.tmp))
    assert put.status_code in (200, 201), put.text
    assert "PRIVATE KEY" not in put.text  # nor in the PUT's response
    spec = http.get("/openapi.json").json()
    plurals = {t.plural for t in default_registry().all()} | {"secrets"}
    examples = {"mesh": "default", "name": "server-1"}
    urls: set[str] = set()
    for path, methods in spec["paths"].items():
        if "get" not in methods:
            continue
        for plural in plurals if "{plural}" in path else {""}:
            url = path.replace("{plural}", plural)
            for param in re.findall(r"\{(\w+)\}", url):
                url = url.replace("{" + param + "}", examples.get(param, "default"))
            urls.add(url)
    urls |= {f"/meshes/default/{p}/default.ca-builtin-cert-ca-1" for p in plurals}
    urls |= {"/meshes/default", "/meshes/default/dataplanes/client-1/_config", "/meshes/vault", "/meshes"}
    served = 0
    for url in sorted(urls):
        resp = http.get(url)
        assert resp.status_code < 500, (url, resp.status_code, resp.text[:200])
        assert not PEM_KEY.search(resp.text), f"{url} serves a private key"
        assert "PRIVATE KEY" not in resp.text, url
        served += resp.status_code == 200
    config = http.get("/meshes/default/dataplanes/server-1/_config").json()
    secrets = config["xds"]["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"]
    identity = [s for s in secrets if "tlsCertificate" in s]
    assert identity and all(
        s["tlsCertificate"]["privateKey"] == {"inlineString": "[redacted]"} for s in identity
    )
    assert served >= 8
    listed = {m["name"]: m for m in http.get("/meshes").json()["items"]}
    for mesh in (listed["vault"], http.get("/meshes/vault").json()):
        keys = [b["conf"]["key"] for b in mesh["mtls"]["backends"]]
        assert keys == [{"inlineString": "[redacted]"}, {"inline": "[redacted]"}], keys


def inline_key_mesh(tmp: Path) -> dict[str, Any]:
    """Mesh ``vault`` with two provided CA backends whose keys are inline: PEM text and base64."""
    _, cert_file, key_file = corporate_ca(tmp, mesh="vault")
    cert, key = cert_file.read_text(), key_file.read_text()
    return {
        "type": "Mesh",
        "name": "vault",
        "mtls": {
            "enabledBackend": "text",
            "backends": [
                {
                    "name": "text",
                    "type": "provided",
                    "conf": {"cert": {"inlineString": cert}, "key": {"inlineString": key}},
                },
                {
                    "name": "b64",
                    "type": "provided",
                    "conf": {
                        "cert": {"inlineString": cert},
                        "key": {"inline": base64.b64encode(key.encode()).decode()},
                    },
                },
            ],
        },
    }


def test_a_redacted_key_keeps_the_stored_one_on_put(deployment: Deployment) -> None:
    """GET -> edit -> PUT: a data source that is still ``[redacted]`` keeps the stored key (the control plane
    checks the CA with it: a 200 means the key of the certificate was found); one with nothing stored to keep is
    a 400 naming the field."""
    http = deployment.cp.http
    assert http.put("/meshes/vault", json=inline_key_mesh(deployment.tmp)).status_code in (200, 201)
    doc = {k: v for k, v in http.get("/meshes/vault").json().items() if not k.endswith("Time")}
    doc["labels"] = {"edited": "yes"}
    resp = http.put("/meshes/vault", json=doc)
    assert resp.status_code == 200, resp.text
    assert resp.json()["labels"] == {"edited": "yes"} and "PRIVATE KEY" not in resp.text
    assert [b["conf"]["key"] for b in resp.json()["mtls"]["backends"]] == [
        {"inlineString": "[redacted]"},
        {"inline": "[redacted]"},
    ]
    # the kept key is the stored one: with another certificate it no longer matches
    other_cert, _, _ = corporate_ca(deployment.tmp, mesh="vault")
    changed = copy.deepcopy(doc)
    pem = other_cert.public_bytes(serialization.Encoding.PEM).decode()
    changed["mtls"]["backends"][0]["conf"]["cert"] = {"inlineString": pem}
    resp = http.put("/meshes/vault", json=changed)
    assert resp.status_code == 400, resp.text
    [problem] = resp.json()["invalid_parameters"]
    assert problem["field"] == "mtls.backends[0].conf.key", problem
    assert "does not match the certificate" in problem["reason"]
    # a renamed backend has no stored key: the placeholder is refused, naming the field
    renamed = copy.deepcopy(doc)
    renamed["mtls"]["backends"][1]["name"] = "b64-new"
    resp = http.put("/meshes/vault", json=renamed)
    assert resp.status_code == 400, resp.text
    [problem] = resp.json()["invalid_parameters"]
    assert problem["field"] == "mtls.backends[1].conf.key.inline", problem
    assert "placeholder" in problem["reason"] and "give the key itself" in problem["reason"]
    resp = http.put("/meshes/vault-2", json={**doc, "name": "vault-2"})
    assert resp.status_code == 400 and len(resp.json()["invalid_parameters"]) == 2, resp.text
    assert http.get("/meshes/vault-2").status_code == 404


def test_a_provided_ca_the_control_plane_cannot_use_is_refused(deployment: Deployment) -> None:
    """Apply-time checks run on the control plane: an unreadable file or a key of another certificate is a 400
    naming the field, and the stored Mesh is unchanged."""
    d = deployment
    http = d.cp.http
    before = http.get("/meshes/default").json()
    wrong_key = d.tmp / "other.key"
    wrong_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    fifo = d.tmp / "ca.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    cases = [
        (
            d.mesh("ca-2").replace(str(d.cert_file), str(d.tmp / "missing.crt")),
            "mtls.backends[1].conf.cert.file",
            "cannot read",
        ),
        # special files are refused without being read: a FIFO would block, /dev/zero never ends
        (
            d.mesh("ca-2").replace(str(d.cert_file), str(fifo)),
            "mtls.backends[1].conf.cert.file",
            "is a FIFO, not a regular file",
        ),
        (
            d.mesh("ca-2").replace(str(d.key_file), "/dev/zero"),
            "mtls.backends[1].conf.key.file",
            "is a character device, not a regular file",
        ),
        (
            d.mesh("ca-2").replace(str(d.key_file), str(d.tmp)),
            "mtls.backends[1].conf.key.file",
            "is a directory, not a regular file",
        ),
        (
            d.mesh("ca-2").replace(str(d.key_file), str(wrong_key)),
            "mtls.backends[1].conf.key",
            "does not match the certificate",
        ),
    ]
    for text, field, reason in cases:
        resp = http.put("/meshes/default", json=yaml.safe_load(text))
        assert resp.status_code == 400, resp.text
        [problem] = resp.json()["invalid_parameters"]
        assert problem["field"] == field and reason in problem["reason"], problem
    after = http.get("/meshes/default").json()
    assert after["modificationTime"] == before["modificationTime"]
    assert http.get("/").status_code == 200  # the control plane is alive and serving
