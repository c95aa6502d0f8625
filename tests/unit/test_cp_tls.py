"""The control plane's own TLS material: CA in DATA_DIR/tls, server certificate, provided certificates."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from isthmus.cp.tls import RENEW_BEFORE, SERVER_VALIDITY, TlsError, ensure_server_tls, server_hosts

ADDRESSES = ("127.0.0.1:5678", "127.0.0.1:5681", "127.0.0.1:5682")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_hosts_cover_loopback_the_hostname_and_the_addresses() -> None:
    hosts = server_hosts(
        ["0.0.0.0:5678", "[::]:5681", "cp.example.com.:5682", "[2001:db8:0::1]:1", "10.0.0.5:1"]
    )
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()} <= set(hosts)
    assert {"cp.example.com", "2001:db8::1", "10.0.0.5"} <= set(hosts)
    assert "0.0.0.0" not in hosts and "::" not in hosts
    assert hosts == sorted(hosts)


def test_generates_a_private_ca_and_a_server_certificate(tmp_path: Path) -> None:
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        tls = ensure_server_tls(tmp_path / "data", ADDRESSES)
    finally:
        os.umask(old)
    tls_dir = tmp_path / "data" / "tls"
    assert tls.ca_file == tls_dir / "ca.crt"
    assert mode(tls_dir) == 0o700
    assert mode(tls_dir / "ca.key") == 0o600 and mode(tls_dir / "server.key") == 0o600
    ca, cert = load(tls_dir / "ca.crt"), load(tls.cert_file)
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert sans(cert) == set(server_hosts(ADDRESSES))
    assert tls.cert_pem == tls.cert_file.read_bytes() and tls.key_pem == tls.key_file.read_bytes()
    tls.grpc_credentials()  # gRPC accepts the pair


def test_restarts_reuse_the_ca_and_a_current_certificate(tmp_path: Path) -> None:
    first = ensure_server_tls(tmp_path, ADDRESSES)
    ca_pem = (tmp_path / "tls" / "ca.crt").read_bytes()
    second = ensure_server_tls(tmp_path, ADDRESSES)
    assert second.cert_pem == first.cert_pem and second.key_pem == first.key_pem
    assert (tmp_path / "tls" / "ca.crt").read_bytes() == ca_pem


def test_new_hosts_or_near_expiry_reissue_from_the_same_ca(tmp_path: Path) -> None:
    first = ensure_server_tls(tmp_path, ADDRESSES)
    ca = load(tmp_path / "tls" / "ca.crt")
    moved = ensure_server_tls(tmp_path, ("cp.internal:5678", *ADDRESSES[1:]))
    assert moved.cert_pem != first.cert_pem
    cert = x509.load_pem_x509_certificate(moved.cert_pem)
    cert.verify_directly_issued_by(ca)
    assert "cp.internal" in sans(cert)
    later = datetime.now(UTC) + SERVER_VALIDITY - RENEW_BEFORE + timedelta(days=1)
    renewed = ensure_server_tls(tmp_path, ("cp.internal:5678", *ADDRESSES[1:]), now=later)
    assert renewed.cert_pem != moved.cert_pem
    x509.load_pem_x509_certificate(renewed.cert_pem).verify_directly_issued_by(ca)


def test_a_server_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    ensure_server_tls(tmp_path / "a", ADDRESSES)
    ensure_server_tls(tmp_path / "b", ADDRESSES)
    foreign = (tmp_path / "b" / "tls" / "server.crt").read_bytes()
    (tmp_path / "a" / "tls" / "server.crt").write_bytes(foreign)
    (tmp_path / "a" / "tls" / "server.key").write_bytes((tmp_path / "b" / "tls" / "server.key").read_bytes())
    tls = ensure_server_tls(tmp_path / "a", ADDRESSES)
    assert tls.cert_pem != foreign
    x509.load_pem_x509_certificate(tls.cert_pem).verify_directly_issued_by(
        load(tmp_path / "a" / "tls" / "ca.crt")
    )


@pytest.mark.parametrize("damage", ["missing key", "garbage cert", "other key"])
def test_a_damaged_ca_is_an_error_not_silently_replaced(tmp_path: Path, damage: str) -> None:
    ensure_server_tls(tmp_path, ADDRESSES)
    ensure_server_tls(tmp_path / "other", ADDRESSES)
    tls_dir = tmp_path / "tls"
    if damage == "missing key":
        (tls_dir / "ca.key").unlink()
    elif damage == "garbage cert":
        (tls_dir / "ca.crt").write_text("not a certificate")
    else:
        (tls_dir / "ca.key").write_bytes((tmp_path / "other" / "tls" / "ca.key").read_bytes())
    with pytest.raises(TlsError) as info:
        ensure_server_tls(tmp_path, ADDRESSES)
    assert "remove both ca.crt and ca.key" in str(info.value)
    assert "\n" not in str(info.value)


def own_pair(tmp_path: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "own")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "own.crt", tmp_path / "own.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_provided_certificate_is_used_and_no_ca_is_made(tmp_path: Path) -> None:
    cert_file, key_file = own_pair(tmp_path)
    tls = ensure_server_tls(tmp_path / "data", ADDRESSES, cert_file=cert_file, key_file=key_file)
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (cert_file, key_file, None)
    assert tls.cert_pem == cert_file.read_bytes()
    assert not (tmp_path / "data" / "tls").exists()


def test_provided_certificate_errors_name_the_flag(tmp_path: Path) -> None:
    cert_file, key_file = own_pair(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = own_pair(tmp_path / "other")
    cases = [
        ({"cert_file": tmp_path / "nope.crt", "key_file": key_file}, "--tls-cert-file"),
        ({"cert_file": key_file, "key_file": key_file}, "--tls-cert-file"),
        ({"cert_file": cert_file, "key_file": cert_file}, "--tls-key-file"),
        ({"cert_file": cert_file, "key_file": other_key}, "does not belong"),
        ({"cert_file": cert_file}, "both --tls-cert-file and --tls-key-file"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(TlsError, match=expected):
            ensure_server_tls(tmp_path / "data", ADDRESSES, **kwargs)  # type: ignore[arg-type]
