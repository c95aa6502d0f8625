"""TLS between data planes and the control plane, with real Envoys: the CP's own CA in DATA_DIR/tls, the
certificate it presents on the xDS port and the HTTPS API, agents that verify it (or refuse it), a certificate
given with --tls-cert-file, and owner-only files."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, ControlPlane, Sidecar, running, wait_for

pytestmark = pytest.mark.e2e

MESH = "type: Mesh\nname: default\n"


def dataplane(name: str) -> str:
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {free_port()}
    servicePort: {free_port()}
    tags:
      kuma.io/service: {name}
      kuma.io/protocol: http
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def presented(port: int, ca_file: Path, host: str = "127.0.0.1", alpn: str = "h2") -> x509.Certificate:
    """The certificate served on ``port``, after a handshake that verifies it against ``ca_file`` for ``host``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def envoy_stat(sidecar: Sidecar, name: str) -> int:
    text = httpx.get(f"{sidecar.admin}/stats?filter={name}", timeout=2).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def listener_names(sidecar: Sidecar) -> list[str]:
    statuses = (
        httpx.get(f"{sidecar.admin}/listeners?format=json", timeout=2).json().get("listener_statuses", [])
    )
    return [entry["name"] for entry in statuses]


def own_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA of the operator's and a server certificate for 127.0.0.1/localhost: (ca, cert, key) files."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator's control plane")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane with its SQLite store in its data directory (``--store sqlite``)."""
    plane = ControlPlane(tmp_path_factory.mktemp("tls"), store="sqlite").start()
    try:
        plane.apply(MESH)
        yield plane
    finally:
        plane.stop()
        plane.http.close()


def test_sidecar_gets_its_config_over_verified_tls(cp: ControlPlane) -> None:
    sidecar = Sidecar(cp.tmp, cp, dataplane("verified")).start()
    with running(sidecar):
        sidecar.wait_listener("inbound")
        assert cp.insight("default", "verified")["online"]
        assert envoy_stat(sidecar, "cluster.ads_cluster.ssl.handshake") >= 1
        bootstrap = sidecar.work / "bootstrap.json"
        assert mode(bootstrap) == 0o600
        assert cp.ca_file.read_text() in bootstrap.read_text().replace("\\n", "\n")
    assert sidecar.proc is not None and "certificate is not verified" not in sidecar.proc.log()


def test_without_a_ca_the_agent_warns_once_and_still_uses_tls(cp: ControlPlane) -> None:
    sidecar = Sidecar(cp.tmp, cp, dataplane("unverified"), ca_file=None, verify=False).start()
    with running(sidecar):
        sidecar.wait_listener("inbound")
        assert envoy_stat(sidecar, "cluster.ads_cluster.ssl.handshake") >= 1
    assert sidecar.proc is not None
    assert sidecar.proc.log().count("certificate is not verified") == 1


def test_a_wrong_ca_gets_no_config(cp: ControlPlane, tmp_path: Path) -> None:
    wrong_ca, _, _ = own_pki(tmp_path / "wrong")
    # Registered over the plain loopback API, so only Envoy's xDS connection meets the wrong CA.
    sidecar = Sidecar(cp.tmp, cp, dataplane("wrong-ca"), ca_file=wrong_ca, cp_address=cp.url).start()
    with running(sidecar):
        wait_for(
            lambda: envoy_stat(sidecar, "cluster.ads_cluster.ssl.fail_verify_error") >= 2, 30, what="refusal"
        )
        assert listener_names(sidecar) == []
        insight = cp.insight("default", "wrong-ca")
        assert not insight["online"] and insight["subscriptions"] == []
        clusters = httpx.get(f"{sidecar.admin}/clusters?format=json", timeout=2).json()["cluster_statuses"]
        assert [c["name"] for c in clusters] == ["ads_cluster"]  # nothing from the control plane


def test_the_agent_refuses_an_api_whose_certificate_it_does_not_trust(
    cp: ControlPlane, tmp_path: Path
) -> None:
    wrong_ca, _, _ = own_pki(tmp_path / "wrong")
    spec = tmp_path / "dp.yaml"
    spec.write_text(dataplane("refuses"))
    args = [
        "dp",
        "run",
        "--cp-address",
        cp.https_url,
        "--ca-cert-file",
        str(wrong_ca),
        "--dataplane-file",
        str(spec),
    ]
    result = subprocess.run([*ISTHMUS, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "is not trusted" in error[0] and "--ca-cert-file" in error[0]
    assert cp.http.get("/meshes/default/dataplanes/refuses").status_code == 404


def test_certificate_on_the_xds_port_and_the_https_api(cp: ControlPlane) -> None:
    ca = x509.load_pem_x509_certificate(cp.ca_file.read_bytes())
    on_xds = presented(cp.xds_port, cp.ca_file)
    on_https = presented(cp.api_tls_port, cp.ca_file, host="localhost", alpn="http/1.1")
    assert on_xds == on_https
    on_xds.verify_directly_issued_by(ca)
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()} <= sans(on_xds)
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    response = httpx.get(cp.https_url + "/", verify=context, timeout=5)
    assert response.status_code == 200
    assert response.json()["xdsAddress"] == f"127.0.0.1:{cp.xds_port}"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cp.https_url + "/", timeout=5)  # not in the system's trust store


def test_files_are_owner_only_and_the_ca_survives_a_restart(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, store="sqlite").start()
    try:
        plane.apply(MESH)
        data = plane.data_dir
        assert mode(data) == 0o700 and mode(data / "tls") == 0o700
        for name in ("tls/ca.key", "tls/server.key", "isthmus.db", "isthmus.db-wal", "isthmus.db-shm"):
            assert mode(data / name) == 0o600, name
        ca_before = plane.ca_file.read_bytes()
        cert_before = presented(plane.xds_port, plane.ca_file)
    finally:
        plane.stop()
    plane.start()
    try:
        assert plane.ca_file.read_bytes() == ca_before
        assert presented(plane.xds_port, plane.ca_file) == cert_before
        assert plane.http.get("/meshes/default").status_code == 200
    finally:
        plane.stop()
        plane.http.close()


def test_a_given_certificate_is_presented_and_no_ca_is_made(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = own_pki(tmp_path / "operator")
    plane = ControlPlane(
        tmp_path,
        store="memory",
        extra_args=("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
    ).start()
    sidecar = Sidecar(tmp_path, plane, dataplane("operator"), ca_file=ca_file)
    with running(plane, sidecar):
        given = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert presented(plane.xds_port, ca_file) == given
        assert presented(plane.api_tls_port, ca_file, alpn="http/1.1") == given
        assert not (plane.data_dir / "tls").exists()
        plane.apply(MESH)
        sidecar.start()
        sidecar.wait_listener("inbound")
    plane.http.close()
