"""SDS secrets: the proxy's identity certificate and the mesh's CA bundle (during a CA switch, both CAs), and
the redaction of private keys from anything the control plane shows."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from isthmus.ir.model import Secret

REDACTED = "[redacted]"
_PRIVATE_KEY_FIELDS = frozenset({"privateKey", "private_key"})


def secret(ir: Secret) -> secret_pb2.Secret:
    if ir.trusted_ca:
        # a concatenation of PEM certificates: Envoy trusts each of them (both CAs while the mesh's CA changes)
        return secret_pb2.Secret(
            name=ir.name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string=ir.trusted_ca)
            ),
        )
    return secret_pb2.Secret(
        name=ir.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=ir.certificate_chain),
            private_key=base_pb2.DataSource(inline_string=ir.private_key),
        ),
    )


def redact_private_keys(doc: Any) -> Any:
    """``doc`` (an xDS resource as JSON) with every private key replaced by ``[redacted]``, in place: any
    ``privateKey`` field at any depth, and any string holding a PEM private key block (a MeshProxyPatch could
    put one anywhere)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in _PRIVATE_KEY_FIELDS:
                doc[key] = {"inlineString": REDACTED}
            else:
                doc[key] = redact_private_keys(value)
    elif isinstance(doc, list):
        doc[:] = [redact_private_keys(v) for v in doc]
    elif isinstance(doc, str) and "PRIVATE KEY" in doc:
        return REDACTED
    return doc
