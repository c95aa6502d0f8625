"""The built-in certificate authority of a mesh: ECDSA P-256, self-signed, SPIFFE trust domain ``spiffe://<mesh>``.

The CA is kept as PEM (certificate and PKCS#8 key), which is also how the control plane stores it; the parsed
objects are derived lazily and cached on the instance.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "CA_VALIDITY",
    "CLOCK_SKEW",
    "CaPrivateKey",
    "CertificateAuthority",
    "check_uri_part",
    "generate_ca",
    "random_serial",
    "utc_now_seconds",
]

CA_VALIDITY = timedelta(days=3650)  # 10 years
CLOCK_SKEW = timedelta(minutes=1)  # certificates start this much before "now", for peers whose clocks lag
ORGANIZATION = "Isthmus"
MIN_RSA_BITS = 2048

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def check_uri_part(what: str, value: str) -> None:
    """ValueError unless ``value`` can go into a URI SAN as is: non-empty printable ASCII without spaces."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    bad = sorted({c for c in value if not ("!" <= c <= "~")})
    if bad:
        raise ValueError(f"{what} {value!r} has characters not allowed in a URI: {''.join(bad)!r}")


def random_serial() -> int:
    """A random positive 128-bit certificate serial number (RFC 5280 allows up to 20 octets)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def utc_now_seconds(now: datetime | None) -> datetime:
    """``now`` (default: the current time) in UTC, truncated to whole seconds as X.509 stores times.

    Raises ValueError for a naive datetime, which would be ambiguous.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA as PEM: ``cert_pem`` (X.509 certificate) and ``key_pem`` (unencrypted private key: PKCS#8, or the
    traditional EC/RSA forms of a provided CA). Built-in CAs are ECDSA P-256; provided ones may be RSA too."""

    cert_pem: bytes
    key_pem: bytes

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @cached_property
    def private_key(self) -> CaPrivateKey:
        """The CA's signing key; ValueError if it is neither an EC nor an RSA (2048 bits or more) key, or does
        not belong to the certificate."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(
                    f"CA key is RSA with {key.key_size} bits; at least {MIN_RSA_BITS} are required"
                )
        elif not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"CA key must be an EC or RSA private key, not {type(key).__name__}")
        if key.public_key() != self.certificate.public_key():
            raise ValueError("CA key does not match the CA certificate")
        return key

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), hex: how the control plane tells CAs apart."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def subject_key_identifier(self) -> bytes:
        """The SKI of the CA certificate (computed from its public key if the extension is missing)."""
        try:
            ext = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.certificate.public_key()).digest
        return ext.value.digest


def self_signed_ca(
    common_name: str, start: datetime, validity: timedelta, uris: tuple[str, ...] = ()
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA certificate and its key: subject ``O=Isthmus, CN=<common_name>``, ``CA:true``
    (critical, no intermediates below it), key usage certificate and CRL signing (critical), the given URI SANs,
    a subject key identifier and a random serial; valid from ``start`` minus the clock skew for ``validity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + validity)
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
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    cert = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    ).sign(key, hashes.SHA256())
    return cert, key


def generate_ca(
    mesh: str, *, backend: str, validity: timedelta = CA_VALIDITY, now: datetime | None = None
) -> CertificateAuthority:
    """A new self-signed CA for ``mesh``.

    Subject ``O=Isthmus, CN=<mesh>``, URI SAN ``spiffe://<mesh>``, ``CA:true`` (critical, no intermediates
    below it), key usage certificate and CRL signing (critical), a subject key identifier and a random 128-bit
    serial. Valid from ``now`` minus one minute of clock skew until ``now + validity``. ``backend`` names the
    mesh's CA backend that owns this CA; it is checked but does not appear in the certificate (as in Kuma).
    """
    check_uri_part("mesh", mesh)
    if not backend:
        raise ValueError("backend must not be empty")
    if validity <= timedelta(0):
        raise ValueError(f"validity must be positive (got {validity})")
    start = utc_now_seconds(now)
    cert, key = self_signed_ca(mesh, start, validity, uris=(f"spiffe://{mesh}",))
    return CertificateAuthority(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
