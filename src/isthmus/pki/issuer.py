"""Workload certificates: SPIFFE identities for data planes, their lifetime and when to rotate them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from isthmus.pki.ca import CLOCK_SKEW, CertificateAuthority, check_uri_part, random_serial, utc_now_seconds

__all__ = [
    "CLOCK_SKEW",
    "MAX_WORKLOAD_LIFETIME",
    "MIN_WORKLOAD_LIFETIME",
    "ROTATE_AT",
    "WorkloadCertificate",
    "format_duration",
    "issue_workload_certificate",
    "needs_rotation",
    "parse_duration",
    "parse_lifetime",
]

ROTATE_AT = 0.8  # as in Kuma: re-issue once 80% of the lifetime has passed
MIN_WORKLOAD_LIFETIME = timedelta(seconds=10)  # rotation at 80% must leave Envoy time to fetch the next one
MAX_WORKLOAD_LIFETIME = timedelta(days=3650)  # 10y, the built-in CA's own validity
MAX_DURATION_TEXT = 64  # characters: longer strings are refused before any number is parsed

_UNITS: dict[str, Fraction] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "\u00b5s": Fraction(1, 10**6),  # micro sign
    "\u03bcs": Fraction(1, 10**6),  # Greek mu
    "ms": Fraction(1, 10**3),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
    "y": Fraction(365 * 86400),
}
_UNIT_NAMES = "ns, us, ms, s, m, h, d, y"
_TERM = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([^0-9.]*)")
_TIMEDELTA_MAX_SECONDS = Fraction(timedelta.max.days * 86400)


def parse_duration(text: str) -> timedelta:
    """Parse a Go/Kuma duration: ``30s``, ``10m``, ``24h``, ``1h30m``, ``1.5h``, ``500ms``, ``2d``, ``1y``.

    A sequence of decimal numbers, each with a unit (``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``, plus
    ``d`` = 24h and ``y`` = 365d). The result must be positive and at least one microsecond. Raises ValueError
    saying what is wrong (never OverflowError). Certificate lifetimes use :func:`parse_lifetime`, which also
    bounds the value.
    """
    value = text.strip()
    if not value:
        raise ValueError(
            f"empty duration: expected something like 30s, 10m, 24h, 1h30m, 2d or 1y (units: {_UNIT_NAMES})"
        )
    if len(value) > MAX_DURATION_TEXT:
        raise ValueError(f"invalid duration {value[:20]!r}...: longer than {MAX_DURATION_TEXT} characters")
    if value.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must be positive")
    body = value.removeprefix("+")
    if body == "0":
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _TERM.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: expected a number at {body[pos:]!r}")
        number, unit = match.groups()
        if not unit:
            raise ValueError(
                f"invalid duration {text!r}: missing unit after {number!r} (units: {_UNIT_NAMES})"
            )
        factor = _UNITS.get(unit)
        if factor is None:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (units: {_UNIT_NAMES})")
        total += Fraction(number) * factor
        pos = match.end()
    if total == 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    if total >= _TIMEDELTA_MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: too long")
    microseconds = int(total * 10**6)
    if microseconds == 0:
        raise ValueError(f"invalid duration {text!r}: shorter than one microsecond")
    return timedelta(microseconds=microseconds)


def format_duration(value: timedelta) -> str:
    """The shortest ``1y``/``2d``/``3h``/``4m``/``5s`` spelling of a whole number of one unit, else seconds."""
    seconds = Fraction(value.days * 86400 + value.seconds) + Fraction(value.microseconds, 10**6)
    for unit in ("y", "d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count.denominator == 1 and count > 0:
            return f"{count.numerator}{unit}"
    return f"{float(seconds):g}s"


def parse_lifetime(
    text: str,
    *,
    minimum: timedelta = MIN_WORKLOAD_LIFETIME,
    maximum: timedelta = MAX_WORKLOAD_LIFETIME,
) -> timedelta:
    """A certificate lifetime (``dpCert.rotation.expiration``): a duration as :func:`parse_duration` reads it,
    between ``minimum`` (10s) and ``maximum`` (10y) inclusive. Raises ValueError with a reason that reads well
    after the field's name, e.g. ``invalid duration '9000y': must be at most 10y``.
    """
    lifetime = parse_duration(text)
    if lifetime < minimum:
        raise ValueError(
            f"invalid duration {text!r}: must be at least {format_duration(minimum)}"
            " (a certificate is renewed after 80% of its lifetime)"
        )
    if lifetime > maximum:
        raise ValueError(
            f"invalid duration {text!r}: must be at most {format_duration(maximum)} (certificate lifetime)"
        )
    return lifetime


@dataclass(frozen=True)
class WorkloadCertificate:
    """An issued leaf certificate (PEM) with its validity window and SPIFFE IDs."""

    cert_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int
    spiffe_ids: tuple[str, ...]

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def lifetime(self) -> timedelta:
        """The whole validity window, clock-skew allowance included."""
        return self.not_after - self.not_before

    @property
    def rotation_due(self) -> datetime:
        """When :func:`needs_rotation` starts to say yes: 80% into the validity window."""
        return self.not_before + self.lifetime * ROTATE_AT


def needs_rotation(cert: WorkloadCertificate, now: datetime | None = None) -> bool:
    """True once 80% of the certificate's validity window has passed (so also once it has expired)."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now >= cert.rotation_due


def _san_uris(
    mesh: str, services: Sequence[str], tags: Mapping[str, Sequence[str]] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(SPIFFE IDs, all URI SANs): one ``spiffe://<mesh>/<service>`` per distinct service in the given order,
    then ``kuma://<tag>/<value>`` per distinct value, tags sorted by name."""
    if isinstance(services, str):
        raise TypeError("services must be a sequence of service names, not a single str")
    if not services:
        raise ValueError("a workload certificate needs at least one service")
    for service in services:
        check_uri_part("service", service)
    spiffe = tuple(dict.fromkeys(f"spiffe://{mesh}/{s}" for s in services))
    uris = list(spiffe)
    for tag in sorted(tags or {}):
        values = (tags or {})[tag]
        if isinstance(values, str):
            raise TypeError(f"tag {tag!r}: values must be a sequence of str, not a single str")
        check_uri_part("tag name", tag)
        for value in values:
            check_uri_part(f"tag {tag!r} value", value)
        uris.extend(dict.fromkeys(f"kuma://{tag}/{v}" for v in values))
    return spiffe, tuple(uris)


def issue_workload_certificate(
    ca: CertificateAuthority,
    *,
    mesh: str,
    services: Sequence[str],
    tags: Mapping[str, Sequence[str]] | None,
    lifetime: timedelta,
    now: datetime | None = None,
) -> WorkloadCertificate:
    """A leaf certificate signed by ``ca`` for a data plane of ``mesh``.

    Fresh ECDSA P-256 key, empty subject, URI SANs ``spiffe://<mesh>/<service>`` for every service and
    ``kuma://<tag>/<value>`` for every tag value (critical, as the subject is empty), extended key usage server
    and client auth, key usage digital signature and key agreement, the CA's key identifier as authority key
    identifier, a random 128-bit serial. Valid from ``now`` minus one minute (clock skew) to ``now + lifetime``,
    but never past the CA's own expiry. ValueError if the CA is not valid at ``now`` or an input is unusable.
    """
    check_uri_part("mesh", mesh)
    if lifetime <= timedelta(0):
        raise ValueError(f"lifetime must be positive (got {lifetime})")
    spiffe, uris = _san_uris(mesh, services, tags)
    start = utc_now_seconds(now)
    if not ca.not_before <= start < ca.not_after:
        raise ValueError(
            f"the CA is not valid at {start.isoformat()} (valid {ca.not_before} to {ca.not_after})"
        )
    not_before = start - CLOCK_SKEW
    # never past the CA's expiry; compared as durations first, so a huge lifetime cannot overflow a datetime
    not_after = ca.not_after if lifetime >= ca.not_after - start else start + lifetime
    serial = random_serial()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,  # not applicable to EC keys
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=ca.subject_key_identifier,
                authority_cert_issuer=None,
                authority_cert_serial_number=None,
            ),
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    return WorkloadCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        spiffe_ids=spiffe,
    )
