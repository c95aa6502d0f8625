"""The Envoy v3 bootstrap of a data-plane proxy, as a JSON-able dict (pure; no I/O).

Everything but the admin API and the ADS connection comes from the control plane: listeners and clusters
over ADS (``cds_config``/``lds_config`` point at ``ads``), endpoints, routes and secrets through the
resources those reference. The ADS cluster must speak HTTP/2, otherwise Envoy silently opens HTTP/1.1
connections and never gets a gRPC stream.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

ADS_CLUSTER = "ads_cluster"

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
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


def ads_cluster(xds_host: str, xds_port: int) -> dict[str, Any]:
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
) -> dict[str, Any]:
    """Return the bootstrap of one proxy. ``node_id`` is ``<mesh>.<name>``; ``admin_port`` 0 lets Envoy pick."""
    if not node_id:
        raise ValueError("node_id: must not be empty")
    if not cluster:
        raise ValueError("cluster: must not be empty")
    if not xds_host:
        raise ValueError("xds_host: must not be empty")
    _check_port("xds_port", xds_port)
    _check_port("admin_port", admin_port, allow_zero=True)
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata or {})},
        "admin": {"address": _socket_address(admin_address.strip("[]"), admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": ADS_CLUSTER}}],
            },
            "cds_config": dict(ads_source),
            "lds_config": dict(ads_source),
        },
        "static_resources": {"clusters": [ads_cluster(xds_host, xds_port)]},
    }
