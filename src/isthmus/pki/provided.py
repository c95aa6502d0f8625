"""Provided CAs (Kuma's ``provided`` CA backend): a user's CA certificate and key, read from a data source and
checked before the control plane signs anything with them.

Pure except :func:`read_data_source`, which reads a file for a ``file`` data source.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from isthmus.pki.ca import MIN_RSA_BITS, CertificateAuthority, utc_now_seconds

__all__ = [
    "DATA_SOURCE_KINDS",
    "MAX_PEM_BYTES",
    "CaProblem",
    "DataSourceError",
    "check_provided_ca",
    "decode_inline",
    "load_provided_ca",
    "read_data_source",
]

DATA_SOURCE_KINDS = ("file", "secret", "inline", "inlineString")
MAX_PEM_BYTES = 64 * 1024  # a CA certificate or key is a few KiB; anything bigger is not one


class DataSourceError(ValueError):
    """A data source could not be read; the message says why (no file contents in it)."""


@dataclass(frozen=True)
class CaProblem:
    """Why a provided CA is refused: ``part`` is ``cert`` or ``key``."""

    part: str
    reason: str


def decode_inline(value: str) -> bytes:
    """The bytes of an ``inline`` data source (base64, as protobuf's JSON form of bytes); ValueError if not."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise DataSourceError("must be base64 (use inlineString for PEM text)") from None


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(value: str, mode: int) -> DataSourceError:
    what = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    return DataSourceError(f"{value!r} is {what}, not a regular file")


def _read_regular_file(value: str) -> bytes:
    """A regular file's bytes, at most :data:`MAX_PEM_BYTES`. Anything else (a directory, FIFO, device or
    socket, which could block or never end) is refused before it is opened, and again on the opened file
    (opened non-blocking) in case the path was replaced in between. Blocking I/O: async callers run it in a
    thread."""
    try:
        if not stat.S_ISREG(mode := os.stat(value).st_mode):
            raise _not_regular(value, mode)
        fd = os.open(value, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(mode := os.fstat(fh.fileno()).st_mode):
                raise _not_regular(value, mode)
            data = fh.read(MAX_PEM_BYTES + 1)
    except DataSourceError:
        raise
    except OSError as exc:
        raise DataSourceError(f"cannot read {value!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise DataSourceError(f"file {value!r} is larger than {MAX_PEM_BYTES // 1024} KiB")
    return data


def read_data_source(kind: str, value: str) -> bytes:
    """The content of a data source: a file's bytes, base64-decoded ``inline`` or UTF-8 ``inlineString``.

    A ``file`` must be a regular file (see :func:`_read_regular_file`); reading it blocks, so async code calls
    this in a thread. ``secret`` is refused (the API has no user-facing Secret kind yet). Raises :class:`DataSourceError` with a
    reason that names no content.
    """
    if kind == "file":
        return _read_regular_file(value)
    if kind == "inline":
        data = decode_inline(value)
    elif kind == "inlineString":
        data = value.encode()
    elif kind == "secret":
        raise DataSourceError("data source 'secret' is not supported yet; use file, inline or inlineString")
    else:
        raise DataSourceError(f"unknown data source {kind!r}; use one of file, inline or inlineString")
    if len(data) > MAX_PEM_BYTES:
        raise DataSourceError(f"is larger than {MAX_PEM_BYTES // 1024} KiB")
    return data


def _load_certificate(cert_pem: bytes) -> tuple[x509.Certificate | None, list[CaProblem]]:
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return None, [CaProblem("cert", "is not a PEM-encoded X.509 certificate")]
    if len(certs) != 1:
        return None, [
            CaProblem(
                "cert",
                f"contains {len(certs)} certificates; give exactly one self-signed CA certificate"
                " (intermediate CAs and chains are not supported yet)",
            )
        ]
    return certs[0], []


def _check_certificate(cert: x509.Certificate, mesh: str, now: datetime) -> list[CaProblem]:
    problems: list[CaProblem] = []

    def bad(reason: str) -> None:
        problems.append(CaProblem("cert", reason))

    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        bad("is not a CA certificate: the basic constraint 'CA' must be true (X509-SVID 4.1)")
    try:
        usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.key_cert_sign:
        bad("the key usage 'keyCertSign' must be set (X509-SVID 4.3)")
    elif usage.key_agreement:
        bad("the key usage 'keyAgreement' must not be set on a CA (X509-SVID appendix A)")
    if cert.issuer != cert.subject:
        bad("must be a self-signed root CA certificate (intermediate CAs are not supported yet)")
    else:
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            bad("must be a self-signed root CA certificate: its signature does not verify with its own key")
    if now < cert.not_valid_before_utc:
        bad(f"is not valid yet (valid from {cert.not_valid_before_utc.isoformat()})")
    if now >= cert.not_valid_after_utc:
        bad(f"has expired (valid until {cert.not_valid_after_utc.isoformat()})")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    domain = f"spiffe://{mesh}"
    for uri in uris:
        if uri.lower().startswith("spiffe://") and uri != domain and not uri.startswith(domain + "/"):
            bad(
                f"its SPIFFE ID {uri!r} is not in the trust domain of mesh {mesh!r} ({domain}):"
                " workload identities would be spiffe://" + mesh + "/<service>"
            )
    try:
        names = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        subtrees = [*(names.permitted_subtrees or []), *(names.excluded_subtrees or [])]
        if any(isinstance(n, x509.UniformResourceIdentifier) for n in subtrees):
            bad(
                "has URI name constraints, which workload certificates (spiffe:// and kuma:// URI SANs)"
                " may violate; they are not supported"
            )
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        bad(f"has an RSA key of {public.key_size} bits; at least {MIN_RSA_BITS} are required")
    elif not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        bad(f"has a {type(public).__name__.removesuffix('PublicKey') or 'unsupported'} key; use EC or RSA")
    return problems


def _check_key(key_pem: bytes, cert: x509.Certificate | None) -> list[CaProblem]:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return [CaProblem("key", "is encrypted; give the private key unencrypted (PEM)")]
    except (ValueError, UnsupportedAlgorithm):
        return [CaProblem("key", "is not a PEM-encoded private key")]
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return [CaProblem("key", f"must be an EC or RSA private key, not {type(key).__name__}")]
    if cert is not None and key.public_key() != cert.public_key():
        return [
            CaProblem("key", "does not match the certificate (it is the private key of another certificate)")
        ]
    return []


def check_provided_ca(
    cert_pem: bytes, key_pem: bytes, *, mesh: str, now: datetime | None = None
) -> list[CaProblem]:
    """Every reason the pair cannot be a mesh CA; empty when it can.

    The certificate must be a single self-signed CA certificate (``CA:true``, ``keyCertSign``, no
    ``keyAgreement``), valid at ``now``, with no SPIFFE ID outside ``spiffe://<mesh>`` and no URI name
    constraints, with an EC or RSA (2048+) key; the key must be an unencrypted PEM private key of that
    certificate.
    """
    at = utc_now_seconds(now)
    cert, problems = _load_certificate(cert_pem)
    if cert is not None:
        problems.extend(_check_certificate(cert, mesh, at))
    problems.extend(_check_key(key_pem, cert))
    return problems


def load_provided_ca(
    cert_pem: bytes, key_pem: bytes, *, mesh: str, now: datetime | None = None
) -> CertificateAuthority:
    """The checked CA; ValueError naming every problem (``cert: ...; key: ...``) otherwise."""
    problems = check_provided_ca(cert_pem, key_pem, mesh=mesh, now=now)
    if problems:
        raise ValueError("; ".join(f"{p.part}: {p.reason}" for p in problems))
    return CertificateAuthority(cert_pem=cert_pem, key_pem=key_pem)
