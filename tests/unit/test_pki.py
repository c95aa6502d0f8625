"""The built-in mesh CA and workload certificates: structure, chain verification, lifetime, rotation rule and
duration parsing."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from isthmus.pki.ca import CA_VALIDITY, CertificateAuthority, generate_ca
from isthmus.pki.issuer import (
    WorkloadCertificate,
    format_duration,
    issue_workload_certificate,
    needs_rotation,
    parse_duration,
    parse_lifetime,
)
from isthmus.pki.provided import (
    MAX_PEM_BYTES,
    DataSourceError,
    check_provided_ca,
    load_provided_ca,
    read_data_source,
)

try:
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    HAVE_VERIFIER = True
    VERIFY_FAILURE: tuple[type[Exception], ...] = (VerificationError,)
except ImportError:  # older cryptography: fall back to checking the signature and the validity window
    HAVE_VERIFIER = False
    VERIFY_FAILURE = (InvalidSignature, ValueError)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return generate_ca("default", backend="ca-1", now=NOW)


def issue(ca: CertificateAuthority, **kwargs: object) -> WorkloadCertificate:
    args: dict[str, object] = {
        "mesh": "default",
        "services": ["web"],
        "tags": None,
        "lifetime": DAY,
        "now": NOW,
    }
    args.update(kwargs)
    return issue_workload_certificate(ca, **args)  # type: ignore[arg-type]


def verify(ca: CertificateAuthority, leaf: WorkloadCertificate, at: datetime) -> list[x509.GeneralName]:
    """Verify ``leaf`` chains to ``ca`` at time ``at``; returns the leaf's SANs. Raises on failure."""
    if not HAVE_VERIFIER:
        leaf.certificate.verify_directly_issued_by(ca.certificate)
        if not leaf.not_before <= at <= leaf.not_after:
            raise ValueError("not valid at that time")
        return list(leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    verifier = PolicyBuilder().store(Store([ca.certificate])).time(at).build_client_verifier()
    verified = verifier.verify(leaf.certificate, [])
    assert verified.chain[-1] == ca.certificate
    return list(verified.subjects or [])


def uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert all(isinstance(n, x509.UniformResourceIdentifier) for n in san)
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def public_bytes(key: CaKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


# --- CA ----------------------------------------------------------------------------------------------------


def test_ca_certificate_structure(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Isthmus"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "default"
    assert len(cert.subject) == 2
    cert.verify_directly_issued_by(cert)  # self-signed

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert not usage.digital_signature and not usage.key_encipherment
    assert uris(cert) == ["spiffe://default"]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.private_key.public_key())

    key = ca.private_key
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert 0 < cert.serial_number < 2**128


def test_ca_validity_defaults_to_ten_years(ca: CertificateAuthority) -> None:
    assert ca.not_after == NOW + CA_VALIDITY
    assert CA_VALIDITY >= timedelta(days=3650)
    assert ca.certificate.not_valid_before_utc == NOW - timedelta(minutes=1)
    short = generate_ca("m", backend="b", validity=timedelta(days=30), now=NOW)
    assert short.not_after == NOW + timedelta(days=30)


def test_each_ca_is_new(ca: CertificateAuthority) -> None:
    other = generate_ca("default", backend="ca-1", now=NOW)
    assert other.key_pem != ca.key_pem
    assert other.certificate.serial_number != ca.certificate.serial_number


def test_ca_round_trips_through_pem(ca: CertificateAuthority) -> None:
    again = CertificateAuthority(cert_pem=ca.cert_pem, key_pem=ca.key_pem)
    assert again == ca
    assert public_bytes(again.private_key) == public_bytes(ca.private_key)


def test_ca_with_a_key_of_another_ca_is_rejected(ca: CertificateAuthority) -> None:
    other = generate_ca("default", backend="ca-1", now=NOW)
    mixed = CertificateAuthority(cert_pem=ca.cert_pem, key_pem=other.key_pem)
    with pytest.raises(ValueError, match="does not match"):
        issue(mixed)


@pytest.mark.parametrize(
    ("mesh", "backend", "validity"),
    [("", "b", CA_VALIDITY), ("m", "", CA_VALIDITY), ("m", "b", timedelta(0)), ("a b", "b", CA_VALIDITY)],
)
def test_generate_ca_rejects_bad_input(mesh: str, backend: str, validity: timedelta) -> None:
    with pytest.raises(ValueError):
        generate_ca(mesh, backend=backend, validity=validity, now=NOW)


def test_generate_ca_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        generate_ca("m", backend="b", now=datetime(2026, 1, 1))


# --- workload certificates ---------------------------------------------------------------------------------


def test_leaf_verifies_against_its_ca(ca: CertificateAuthority) -> None:
    leaf = issue(ca, services=["web", "api"])
    subjects = verify(ca, leaf, NOW + timedelta(hours=1))
    assert [n.value for n in subjects] == ["spiffe://default/web", "spiffe://default/api"]


def test_leaf_does_not_verify_against_another_ca_or_outside_its_lifetime(ca: CertificateAuthority) -> None:
    leaf = issue(ca)
    other = generate_ca("default", backend="ca-1", now=NOW)  # same subject name, different key
    with pytest.raises(VERIFY_FAILURE):
        verify(other, leaf, NOW)
    with pytest.raises(VERIFY_FAILURE):
        verify(ca, leaf, NOW + DAY + timedelta(seconds=1))
    with pytest.raises(VERIFY_FAILURE):
        verify(ca, leaf, NOW - timedelta(minutes=2))


def test_leaf_sans_are_exactly_services_then_tags(ca: CertificateAuthority) -> None:
    leaf = issue(
        ca,
        mesh="prod",
        services=["web", "web-admin", "web"],
        tags={"version": ["v2", "v1"], "kuma.io/zone": ["east"], "team": []},
    )
    assert uris(leaf.certificate) == [
        "spiffe://prod/web",
        "spiffe://prod/web-admin",
        "kuma://kuma.io/zone/east",
        "kuma://version/v2",
        "kuma://version/v1",
    ]
    assert leaf.spiffe_ids == ("spiffe://prod/web", "spiffe://prod/web-admin")
    san = leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # required with an empty subject


def test_leaf_certificate_structure(ca: CertificateAuthority) -> None:
    leaf = issue(ca)
    cert = leaf.certificate
    assert len(cert.subject) == 0
    assert cert.issuer == ca.certificate.subject
    assert cert.serial_number == leaf.serial and 0 < leaf.serial < 2**128

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not basic.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement
    assert not usage.key_cert_sign and not usage.crl_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    key = load_key(leaf.key_pem)
    assert isinstance(key.curve, ec.SECP256R1)
    assert public_bytes(key) == public_bytes(cert.public_key())  # type: ignore[arg-type]


def test_lifetime_is_honoured_with_a_minute_of_clock_skew(ca: CertificateAuthority) -> None:
    for lifetime in (timedelta(hours=1), DAY, timedelta(days=30)):
        leaf = issue(ca, lifetime=lifetime)
        assert leaf.not_before == NOW - timedelta(minutes=1)
        assert leaf.not_after == NOW + lifetime
        assert leaf.certificate.not_valid_before_utc == leaf.not_before
        assert leaf.certificate.not_valid_after_utc == leaf.not_after


def test_sub_second_now_is_truncated_consistently(ca: CertificateAuthority) -> None:
    now = NOW + timedelta(microseconds=700_000)
    leaf = issue(ca, now=now, lifetime=timedelta(hours=1))
    assert leaf.not_after == leaf.certificate.not_valid_after_utc == NOW + timedelta(hours=1)
    shifted = issue(ca, now=now.astimezone(timezone(timedelta(hours=5))))  # any aware time zone is fine
    assert shifted.not_before == leaf.not_before


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = generate_ca("default", backend="b", validity=timedelta(days=10), now=NOW)
    leaf = issue(short_ca, lifetime=timedelta(days=365))
    assert leaf.not_after == short_ca.not_after
    with pytest.raises(ValueError, match="CA is not valid"):
        issue(short_ca, now=NOW + timedelta(days=11))


def test_keys_are_fresh_per_certificate_and_never_the_ca_key(ca: CertificateAuthority) -> None:
    one, two = issue(ca), issue(ca)
    ca_public = public_bytes(ca.private_key)
    assert public_bytes(load_key(one.key_pem)) != ca_public
    assert public_bytes(load_key(two.key_pem)) != ca_public
    assert public_bytes(load_key(one.key_pem)) != public_bytes(load_key(two.key_pem))
    assert one.key_pem != ca.key_pem
    assert one.serial != two.serial


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"services": []}, ValueError),
        ({"services": "web"}, TypeError),
        ({"services": ["has space"]}, ValueError),
        ({"services": [""]}, ValueError),
        ({"tags": {"version": "v1"}}, TypeError),
        ({"tags": {"version": ["v\u00e9"]}}, ValueError),
        ({"mesh": ""}, ValueError),
        ({"lifetime": timedelta(0)}, ValueError),
        ({"lifetime": -DAY}, ValueError),
        ({"now": datetime(2026, 3, 1)}, ValueError),
    ],
)
def test_issue_rejects_bad_input(
    ca: CertificateAuthority, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        issue(ca, **kwargs)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_accepts_the_chain_for_client_and_server_use(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    leaf = issue_workload_certificate(
        ca, mesh="default", services=["web"], tags={"env": ["prod"]}, lifetime=DAY
    )  # valid now: openssl checks against the wall clock
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    for purpose in ("sslclient", "sslserver"):
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                str(tmp_path / "ca.pem"),
                str(tmp_path / "leaf.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- rotation ----------------------------------------------------------------------------------------------


def test_needs_rotation_after_eighty_percent_of_the_lifetime(ca: CertificateAuthority) -> None:
    leaf = issue(ca, lifetime=DAY)
    window = leaf.not_after - leaf.not_before
    assert not needs_rotation(leaf, leaf.not_before)
    assert not needs_rotation(leaf, leaf.not_before + window * 0.79)
    assert needs_rotation(leaf, leaf.not_before + window * 0.81)
    assert needs_rotation(leaf, leaf.not_after)
    assert needs_rotation(leaf, leaf.not_after + DAY)  # expired
    assert leaf.not_before + window * 0.79 < leaf.rotation_due < leaf.not_before + window * 0.81


def test_needs_rotation_uses_the_current_time_by_default(ca: CertificateAuthority) -> None:
    fresh = issue_workload_certificate(ca, mesh="default", services=["web"], tags=None, lifetime=DAY)
    assert not needs_rotation(fresh)
    assert needs_rotation(issue(ca, lifetime=DAY))  # issued at NOW (2026-03-01), long expired or due by now
    with pytest.raises(ValueError, match="timezone"):
        needs_rotation(fresh, datetime(2026, 3, 1))


# --- parse_duration / parse_lifetime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
        ("2d", timedelta(days=2)),
        ("1y", timedelta(days=365)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(minutes=90)),
        (".5m", timedelta(seconds=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1500us", timedelta(microseconds=1500)),
        ("1500\u00b5s", timedelta(microseconds=1500)),
        ("2000000ns", timedelta(milliseconds=2)),
        (" 24h ", timedelta(hours=24)),
        ("+1h", timedelta(hours=1)),
    ],
)
def test_parse_duration_accepts_go_and_kuma_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("24", "missing unit"),
        ("1h30", "missing unit"),
        ("10x", "unknown unit 'x'"),
        ("1H", "unknown unit 'H'"),
        ("1 h", "unknown unit"),
        ("1e3s", "unknown unit 'e'"),
        ("h", "expected a number"),
        ("1..5h", "missing unit"),
        ("-1h", "positive"),
        ("0", "greater than zero"),
        ("0s", "greater than zero"),
        ("0h0m", "greater than zero"),
        ("1ns", "microsecond"),
        ("99999999999y", "too long"),
        ("9" * 30 + "y", "too long"),
        ("1" * 5000 + "s", "longer than 64 characters"),
        ("one day", "expected a number"),
    ],
)
def test_parse_duration_rejects_bad_input_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(minutes=90)),
        ("2y", timedelta(days=730)),
        ("10y", timedelta(days=3650)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_parse_lifetime_accepts_lifetimes_within_bounds(text: str, expected: timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9000y", "invalid duration '9000y': must be at most 10y"),
        ("10y1s", "must be at most 10y"),
        ("99999999999y", "too long"),
        ("9s", "invalid duration '9s': must be at least 10s"),
        ("500ms", "must be at least 10s"),
        ("1ns", "microsecond"),
        ("", "empty duration"),
        ("1x", "unknown unit"),
    ],
)
def test_parse_lifetime_refuses_lifetimes_out_of_bounds(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_lifetime(text)


def test_parse_lifetime_takes_other_bounds() -> None:
    assert parse_lifetime("1s", minimum=timedelta(seconds=1)) == timedelta(seconds=1)
    with pytest.raises(ValueError, match="at most 1h"):
        parse_lifetime("2h", maximum=timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=3650), "10y"),
        (timedelta(days=2), "2d"),
        (timedelta(hours=25), "25h"),
        (timedelta(seconds=10), "10s"),
        (timedelta(milliseconds=1500), "1.5s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_a_lifetime_beyond_the_ca_expiry_is_clipped_without_overflow(ca: CertificateAuthority) -> None:
    cert = issue(ca, lifetime=timedelta(days=999_999_999))
    assert cert.not_after == ca.not_after


# --- provided CAs ------------------------------------------------------------------------------------------


def make_ca_cert(
    key: CaKey,
    *,
    ca: bool = True,
    key_usage: x509.KeyUsage | None = None,
    uris: tuple[str, ...] = (),
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 365 * DAY,
    issuer_key: CaKey | None = None,
    name_constraints: x509.NameConstraints | None = None,
) -> bytes:
    """A CA-like certificate as a user would bring one, with the knobs the checks look at."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp-ca")])
    issuer = subject if issuer_key is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])
    usage = key_usage or x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CaKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_a_provided_rsa_ca_signs_workload_certificates_that_verify(rsa_key: rsa.RSAPrivateKey) -> None:
    cert = make_ca_cert(rsa_key, uris=("spiffe://default",))
    assert check_provided_ca(cert, key_pem(rsa_key), mesh="default", now=NOW) == []
    ca = load_provided_ca(cert, key_pem(rsa_key), mesh="default", now=NOW)
    leaf = issue(ca)
    assert "spiffe://default/web" in [str(n.value) for n in verify(ca, leaf, NOW)]


def test_a_provided_ec_ca_with_a_traditional_key_is_accepted(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = make_ca_cert(ec_key)
    traditional = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert check_provided_ca(cert, traditional, mesh="default", now=NOW) == []
    verify(
        load_provided_ca(cert, traditional, mesh="default", now=NOW),
        issue(load_provided_ca(cert, traditional, mesh="default", now=NOW)),
        NOW,
    )


NO_CERT_SIGN = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
WITH_KEY_AGREEMENT = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"ca": False}, "basic constraint 'CA' must be true"),
        ({"key_usage": NO_CERT_SIGN}, "'keyCertSign' must be set"),
        ({"key_usage": WITH_KEY_AGREEMENT}, "'keyAgreement' must not be set"),
        ({"not_after": NOW - timedelta(seconds=1)}, "has expired"),
        ({"not_before": NOW + DAY}, "is not valid yet"),
        ({"uris": ("spiffe://other",)}, "not in the trust domain of mesh 'default'"),
        (
            {
                "name_constraints": x509.NameConstraints(
                    [x509.UniformResourceIdentifier("spiffe://default")], None
                )
            },
            "URI name constraints",
        ),
        ({"issuer_key": "other"}, "must be a self-signed root CA"),
    ],
)
def test_a_provided_ca_is_refused_with_the_reason(
    ec_key: ec.EllipticCurvePrivateKey, options: dict[str, object], reason: str
) -> None:
    if options.get("issuer_key") == "other":
        options = {**options, "issuer_key": ec.generate_private_key(ec.SECP256R1())}
    cert = make_ca_cert(ec_key, **options)  # type: ignore[arg-type]
    problems = check_provided_ca(cert, key_pem(ec_key), mesh="default", now=NOW)
    assert [p.part for p in problems] == ["cert"]
    assert reason in problems[0].reason
    with pytest.raises(ValueError, match=re.escape(reason)):
        load_provided_ca(cert, key_pem(ec_key), mesh="default", now=NOW)


def test_a_provided_key_must_be_the_certificates_unencrypted_ec_or_rsa_key(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    cert = make_ca_cert(ec_key)

    def reasons(key: bytes) -> list[str]:
        return [f"{p.part}: {p.reason}" for p in check_provided_ca(cert, key, mesh="default", now=NOW)]

    assert reasons(key_pem(rsa_key)) == [
        "key: does not match the certificate (it is the private key of another certificate)"
    ]
    assert reasons(key_pem(ec_key, b"secret")) == [
        "key: is encrypted; give the private key unencrypted (PEM)"
    ]
    assert reasons(b"not a key") == ["key: is not a PEM-encoded private key"]
    ed = ed25519.Ed25519PrivateKey.generate()
    assert reasons(key_pem(ed)) == ["key: must be an EC or RSA private key, not Ed25519PrivateKey"]  # type: ignore[arg-type]


def test_a_provided_cert_must_be_one_pem_certificate(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = make_ca_cert(ec_key)
    two = check_provided_ca(cert + cert, key_pem(ec_key), mesh="default", now=NOW)
    assert [p.reason for p in two] == [
        "contains 2 certificates; give exactly one self-signed CA certificate"
        " (intermediate CAs and chains are not supported yet)"
    ]
    garbage = check_provided_ca(b"hello", key_pem(ec_key), mesh="default", now=NOW)
    assert [p.reason for p in garbage] == ["is not a PEM-encoded X.509 certificate"]


def test_a_small_rsa_ca_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    problems = check_provided_ca(make_ca_cert(small), key_pem(small), mesh="default", now=NOW)
    assert [p.reason for p in problems] == ["has an RSA key of 1024 bits; at least 2048 are required"]


def test_data_sources(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"PEM")
    assert read_data_source("file", str(tmp_path / "ca.crt")) == b"PEM"
    assert read_data_source("inline", base64.b64encode(b"PEM").decode()) == b"PEM"
    assert read_data_source("inlineString", "PEM") == b"PEM"
    with pytest.raises(DataSourceError, match=r"cannot read '.*missing': No such file or directory"):
        read_data_source("file", str(tmp_path / "missing"))
    with pytest.raises(DataSourceError, match="is a directory"):
        read_data_source("file", str(tmp_path))
    with pytest.raises(DataSourceError, match="must be base64"):
        read_data_source("inline", "-----BEGIN")
    with pytest.raises(DataSourceError, match="'secret' is not supported yet"):
        read_data_source("secret", "my-ca")
    (tmp_path / "big").write_bytes(b"x" * (MAX_PEM_BYTES + 1))
    with pytest.raises(DataSourceError, match="larger than 64 KiB"):
        read_data_source("file", str(tmp_path / "big"))


def test_special_files_are_refused_without_being_read(tmp_path: Path) -> None:
    """A FIFO would block the reader until someone writes to it, /dev/zero would never end: only regular files
    are read (the FIFO has no writer here, so reading it would hang this test)."""
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataSourceError, match=r"'.*ca.fifo' is a FIFO, not a regular file"):
        read_data_source("file", str(fifo))
    with pytest.raises(DataSourceError, match="'/dev/zero' is a character device, not a regular file"):
        read_data_source("file", "/dev/zero")
    (tmp_path / "link").symlink_to(fifo)  # what a symlink points to is checked
    with pytest.raises(DataSourceError, match="is a FIFO"):
        read_data_source("file", str(tmp_path / "link"))
    (tmp_path / "ca.crt").write_bytes(b"PEM")
    (tmp_path / "ca-link").symlink_to(
        tmp_path / "ca.crt"
    )  # a symlinked regular file is fine (mounted secrets)
    assert read_data_source("file", str(tmp_path / "ca-link")) == b"PEM"


def test_the_redaction_placeholder_is_the_same_everywhere() -> None:
    from isthmus.resources.provided_ca import REDACTED
    from isthmus.xds.translate.secrets import REDACTED as SDS_REDACTED

    assert REDACTED == SDS_REDACTED == "[redacted]"


# --- the provided backend in a Mesh ------------------------------------------------------------------------


def provided_mesh(conf: object) -> dict[str, object]:
    return {
        "type": "Mesh",
        "name": "default",
        "mtls": {"enabledBackend": "corp", "backends": [{"name": "corp", "type": "provided", "conf": conf}]},
    }


def refusal(doc: dict[str, object], *, on_control_plane: bool = True) -> list[str]:
    from isthmus.resources.errors import ResourceValidationError
    from isthmus.resources.mesh import MeshSpec
    from isthmus.resources.registry import Registry, ResourceType, Scope, parse_document

    registry = Registry([ResourceType("Mesh", "meshes", Scope.GLOBAL, MeshSpec, spec_at_top_level=True)])
    try:
        parse_document(doc, registry, context={"on_control_plane": True} if on_control_plane else None)
    except ResourceValidationError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_a_mesh_with_a_provided_ca_from_files_is_accepted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "ca.crt").write_bytes(make_ca_cert(rsa_key, not_before=datetime.now(UTC) - DAY))
    (tmp_path / "ca.key").write_bytes(key_pem(rsa_key))
    conf = {"cert": {"file": str(tmp_path / "ca.crt")}, "key": {"file": str(tmp_path / "ca.key")}}
    assert refusal(provided_mesh(conf)) == []


FIELD = "mtls.backends[0].conf"


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        (None, "mtls.backends[0].conf: is required for a provided CA: give conf.cert and conf.key"),
        ({"cert": {"inlineString": "x"}}, f"{FIELD}.key: has to be defined"),
        (
            {"cert": {"secret": "corp-ca-cert"}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert.secret: data source 'secret' is not supported yet; use file, inline or inlineString",
        ),
        (
            {"cert": {"file": "/a", "inlineString": "x"}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert: exactly one of file, inline, inlineString or secret must be set (got file, inlineString)",
        ),
        (
            {"cert": {}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert: exactly one of file, inline, inlineString or secret must be set",
        ),
        (
            {"cert": {"inline": "%%%"}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert.inline: must be base64 (use inlineString for PEM text)",
        ),
        ({"cert": {"url": "x"}, "key": {"inlineString": "x"}}, f"{FIELD}.cert.url: unknown field"),
        (
            {"cert": {"file": "/nonexistent/ca.crt"}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert.file: cannot read '/nonexistent/ca.crt': No such file or directory",
        ),
        (
            {"cert": {"inlineString": "x"}, "key": {"inlineString": "x"}},
            f"{FIELD}.cert: is not a PEM-encoded X.509 certificate",
        ),
    ],
)
def test_a_mesh_with_a_bad_provided_ca_is_refused_naming_the_field(conf: object, expected: str) -> None:
    assert refusal(provided_mesh(conf)) == [expected]


def test_files_are_only_read_on_the_control_plane() -> None:
    conf = {"cert": {"file": "/nonexistent/ca.crt"}, "key": {"file": "/nonexistent/ca.key"}}
    assert (
        refusal(provided_mesh(conf), on_control_plane=False) == []
    )  # CLI-side and stored records: structure only


def test_a_provided_ca_of_another_mesh_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = make_ca_cert(ec_key, uris=("spiffe://payments",), not_before=datetime.now(UTC) - DAY)
    conf = {
        "cert": {"inlineString": cert.decode()},
        "key": {"inline": base64.b64encode(key_pem(ec_key)).decode()},
    }
    [error] = refusal(provided_mesh(conf))
    assert error.startswith(
        f"{FIELD}.cert: its SPIFFE ID 'spiffe://payments' is not in the trust domain of mesh 'default'"
    )
