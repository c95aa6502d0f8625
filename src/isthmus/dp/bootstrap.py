"""The Envoy v3 bootstrap of a data-plane proxy, as a JSON-able dict (pure; no I/O).

Everything but the admin API and the ADS connection comes from the control plane: listeners and clusters
over ADS (``cds_config``/``lds_config`` point at ``ads``), endpoints, routes and secrets through the
resources those reference. The ADS cluster must speak HTTP/2, otherwise Envoy silently opens HTTP/1.1
connections and never gets a gRPC stream.

The ADS connection uses TLS (ALPN ``h2``, TLS 1.2 or later). Given the control plane's CA, Envoy verifies the
server certificate against it and requires the host it connects to among the certificate's SANs (an IP SAN for
an IP, else a DNS SAN, also sent as SNI); without a CA it encrypts but does not verify. A data-plane token
travels as the gRPC initial metadata ``authorization: Bearer <token>`` of the ADS stream. ``hds_config`` opens
the Health Discovery Service stream (Kuma's service probes, :mod:`isthmus.cp.hds`) the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

ADS_CLUSTER = "ads_cluster"

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_ADS_CONNECT_TIMEOUT = "1s"
# HTTP/2 PINGs on the ADS connection notice a dead control plane (or a silently dropped NAT entry) long
# before TCP would; TCP keepalive covers idle connections through middle boxes.
_H2_KEEPALIVE = {"interval": "30s", "timeout": "10s"}
_TCP_KEEPALIVE = {"keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 10}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _check_port(name: str, port: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"{name}: {port!r} is not a valid port ({low}-65535)")


def ads_transport_socket(xds_host: str, ca_cert_pem: str | None) -> dict[str, Any]:
    """TLS to the control plane; verified against ``ca_cert_pem`` (with a SAN match on ``xds_host``) if given."""
    host = xds_host.strip("[]")
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
    }
    context: dict[str, Any] = {
        "@type": f"type.googleapis.com/{_UPSTREAM_TLS_CONTEXT}",
        "common_tls_context": common,
    }
    if ca_cert_pem is not None:
        ip = _is_ip(host)
        name = str(ipaddress.ip_address(host)) if ip else host
        common["validation_context"] = {
            "trusted_ca": {"inline_string": ca_cert_pem},
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if ip else "DNS", "matcher": {"exact": name}}
            ],
        }
    if not _is_ip(host):
        context["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def ads_cluster(
    xds_host: str, xds_port: int, *, tls: bool = True, ca_cert_pem: str | None = None
) -> dict[str, Any]:
    """The static cluster Envoy uses to reach the control plane's gRPC ADS server."""
    host = xds_host.strip("[]")
    cluster: dict[str, Any] = {
        "name": ADS_CLUSTER,
        # An IP needs no resolver; a host name is re-resolved so a moved control plane is found again.
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": _ADS_CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": ADS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, xds_port)}}]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {"connection_keepalive": _H2_KEEPALIVE}},
            }
        },
        "upstream_connection_options": {"tcp_keepalive": dict(_TCP_KEEPALIVE)},
    }
    if not _is_ip(host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if tls:
        cluster["transport_socket"] = ads_transport_socket(host, ca_cert_pem)
    elif ca_cert_pem is not None:
        raise ValueError("ca_cert_pem: needs tls")
    return cluster


def build_bootstrap(
    *,
    node_id: str,
    cluster: str,
    xds_host: str,
    xds_port: int,
    admin_port: int,
    admin_address: str = "127.0.0.1",
    metadata: Mapping[str, str] | None = None,
    tls: bool = True,
    ca_cert_pem: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Return the bootstrap of one proxy. ``node_id`` is ``<mesh>.<name>``; ``admin_port`` 0 lets Envoy pick.

    ``tls`` False connects to the control plane in plaintext (only for tests of the ADS server itself);
    ``ca_cert_pem`` (PEM) makes Envoy verify the control plane; ``token`` is the data-plane token."""
    if not node_id:
        raise ValueError("node_id: must not be empty")
    if not cluster:
        raise ValueError("cluster: must not be empty")
    if not xds_host:
        raise ValueError("xds_host: must not be empty")
    _check_port("xds_port", xds_port)
    _check_port("admin_port", admin_port, allow_zero=True)
    if token is not None and (not token or any(not ("!" <= c <= "~") for c in token)):
        raise ValueError("token: must be non-empty printable ASCII without spaces")
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": ADS_CLUSTER}}
    if token is not None:
        grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    # Kuma's service probes: the Health Discovery Service on the control plane, over the same connection
    hds_source = {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": [dict(grpc_service)],
    }
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata or {})},
        "admin": {"address": _socket_address(admin_address.strip("[]"), admin_port)},
        "hds_config": hds_source,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [grpc_service],
            },
            "cds_config": dict(ads_source),
            "lds_config": dict(ads_source),
        },
        "static_resources": {"clusters": [ads_cluster(xds_host, xds_port, tls=tls, ca_cert_pem=ca_cert_pem)]},
    }
