"""Envoy resources for the mesh's generated names: the DNS listener, MeshExternalService upstreams, and the
``freebind`` of listeners on virtual IPs."""

from __future__ import annotations

from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.data.dns.v3 import dns_table_pb2
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from isthmus.ir.model import Cluster
from isthmus.ir.names import DnsTable, ExternalTls
from isthmus.names.vips import is_vip
from isthmus.xds.translate.common import pack, transport_socket

DNS_FILTER = "envoy.filters.udp.dns_filter"
DNS_LISTENER = "isthmus:dns"
TLS_SOCKET = "envoy.transport_sockets.tls"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


@lru_cache(maxsize=4096)
def dns_listener(table: DnsTable) -> listener_pb2.Listener:
    """A UDP listener with Envoy's DNS filter answering the table's names (A records); other names go to the
    resolvers of the proxy's host (``/etc/resolv.conf``)."""
    domains = [
        dns_table_pb2.DnsTable.DnsVirtualDomain(
            name=record.name,
            endpoint=dns_table_pb2.DnsTable.DnsEndpoint(
                address_list=dns_table_pb2.DnsTable.AddressList(address=list(record.addresses))
            ),
        )
        for record in table.records
    ]
    for domain in domains:
        domain.answer_ttl.seconds = table.ttl_seconds
    config = dns_filter_pb2.DnsFilterConfig(
        stat_prefix="isthmus_dns",
        server_config=dns_filter_pb2.DnsFilterConfig.ServerContextConfig(
            inline_dns_table=dns_table_pb2.DnsTable(virtual_domains=domains)
        ),
        client_config=dns_filter_pb2.DnsFilterConfig.ClientContextConfig(max_pending_lookups=256),
    )
    config.client_config.resolver_timeout.seconds = 5
    return listener_pb2.Listener(
        name=DNS_LISTENER,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                protocol=address_pb2.SocketAddress.UDP, address=table.address, port_value=table.port
            )
        ),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=[listener_components_pb2.ListenerFilter(name=DNS_FILTER, typed_config=pack(config))],
    )


def bind_vip(listener: listener_pb2.Listener, address: str) -> None:
    """A listener on a virtual IP binds even where the address is not (yet) local."""
    if is_vip(address):
        listener.freebind.value = True


def external(out: cluster_pb2.Cluster, ir: Cluster) -> None:
    """A MeshExternalService's cluster: STRICT_DNS when an endpoint is a host name, TLS as its ``tls`` says."""
    ext = ir.external
    if ext is None:
        return
    if ext.resolve_dns:
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if ext.tls is not None:
        out.transport_socket.CopyFrom(_upstream_tls(ext.tls))


@lru_cache(maxsize=1024)
def _upstream_tls(tls: ExternalTls) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext()
    if tls.min_version:
        common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TlsProtocol.Value(
            tls.min_version
        )
    if tls.max_version:
        common.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TlsProtocol.Value(
            tls.max_version
        )
    if tls.client_cert_pem:
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string=tls.client_cert_pem),
                private_key=base_pb2.DataSource(inline_string=tls.client_key_pem),
            )
        )
    if tls.verify_ca or tls.verify_san:
        validation = common_pb2.CertificateValidationContext()
        if tls.verify_ca:
            if tls.ca_pem:
                validation.trusted_ca.inline_string = tls.ca_pem
            else:
                validation.trusted_ca.filename = SYSTEM_CA
        else:
            validation.trust_chain_verification = common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
        if tls.verify_san:
            for value in tls.san_exact:
                validation.match_typed_subject_alt_names.append(
                    _dns_san(string_pb2.StringMatcher(exact=value))
                )
            for value in tls.san_prefix:
                validation.match_typed_subject_alt_names.append(
                    _dns_san(string_pb2.StringMatcher(prefix=value))
                )
        common.validation_context.CopyFrom(validation)
    ctx = tls_pb2.UpstreamTlsContext(
        common_tls_context=common, sni=tls.sni, allow_renegotiation=tls.allow_renegotiation
    )
    return transport_socket(TLS_SOCKET, ctx)


def _dns_san(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=matcher)
