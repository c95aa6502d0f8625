"""Mesh mTLS contexts: what an inbound demands of its peers and what an outbound presents and verifies."""

from __future__ import annotations

from functools import lru_cache

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from isthmus.ir.model import MeshTls
from isthmus.xds.translate.common import sds, transport_socket

TLS_SOCKET = "envoy.transport_sockets.tls"
MESH_ALPN = ["h2", "http/1.1"]


def _uri_san(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)


def _common(
    tls: MeshTls, san: string_pb2.StringMatcher, alpn: list[str], default_max: str | None = None
) -> tls_pb2.CommonTlsContext:
    params = common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TlsProtocol.Value(tls.min_version),
        cipher_suites=list(tls.ciphers),
    )
    max_version = tls.max_version or default_max
    if max_version is not None:
        params.tls_maximum_protocol_version = common_pb2.TlsParameters.TlsProtocol.Value(max_version)
    return tls_pb2.CommonTlsContext(
        tls_params=params,
        tls_certificate_sds_secret_configs=[sds(tls.identity_secret)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[_uri_san(san)]
            ),
            validation_context_sds_secret_config=sds(tls.ca_secret),
        ),
        alpn_protocols=alpn,
    )


@lru_cache(maxsize=4096)
def downstream_socket(tls: MeshTls, trust_domain_prefix: str) -> base_pb2.TransportSocket:
    """Memoised: every inbound of a mesh shares it (callers copy it into their listener, never mutate it)."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(tls, string_pb2.StringMatcher(prefix=trust_domain_prefix), MESH_ALPN),
    )
    ctx.require_client_certificate.value = True
    return transport_socket(TLS_SOCKET, ctx)


@lru_cache(maxsize=4096)
def upstream_socket(tls: MeshTls, spiffe_id: str, http2: bool, sni: str = "") -> base_pb2.TransportSocket:
    """``sni``: the server name a remote zone's ingress routes on (isthmus.ingress.sni); "" for none."""
    ctx = tls_pb2.UpstreamTlsContext(
        # clients offer up to TLS 1.3 (Envoy's upstream default stops at 1.2), so any inbound MeshTLS works
        common_tls_context=_common(
            tls, string_pb2.StringMatcher(exact=spiffe_id), ["h2"] if http2 else [], default_max="TLSv1_3"
        ),
        sni=sni,
    )
    return transport_socket(TLS_SOCKET, ctx)
