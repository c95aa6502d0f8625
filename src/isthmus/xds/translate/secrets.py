"""SDS secrets: the proxy's identity certificate and the mesh CA bundle."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from isthmus.ir.model import Secret


def secret(ir: Secret) -> secret_pb2.Secret:
    if ir.trusted_ca:
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
