"""An ingress's IR -> Envoy resources: a listener with the TLS inspector and one filter chain per SNI, each a TCP
proxy to an EDS cluster. No transport socket anywhere: TLS passes through untouched."""

from __future__ import annotations

import re
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ingress.build import IngressIR
from isthmus.xds import types
from isthmus.xds.translate.common import ads, duration_ms, pack, socket_address

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
CONNECT_TIMEOUT_MS = 5000
_STAT_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")  # e.g. the ``:``, ``=`` and ``,`` of a subset's cluster name


def listener(ir: IngressIR) -> listener_pb2.Listener:
    out = listener_pb2.Listener(
        name=f"inbound:{ir.address}:{ir.port}",
        address=socket_address(ir.address, ir.port),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        ],
        stat_prefix=f"zoneingress_{ir.name}",
    )
    for route in ir.routes:
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=_STAT_UNSAFE.sub("_", route.cluster), cluster=route.cluster
        )
        out.filter_chains.append(
            listener_components_pb2.FilterChain(
                name=route.cluster,
                filter_chain_match=listener_components_pb2.FilterChainMatch(
                    server_names=list(route.server_names), transport_protocol="tls"
                ),
                filters=[listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))],
            )
        )
    return out


def translate_ingress(ir: IngressIR) -> dict[str, list[Any]]:
    clusters = []
    assignments = []
    for c in ir.clusters:
        cluster = cluster_pb2.Cluster(
            name=c.name, type=cluster_pb2.Cluster.EDS, connect_timeout=duration_ms(CONNECT_TIMEOUT_MS)
        )
        cluster.eds_cluster_config.eds_config.CopyFrom(ads())
        clusters.append(cluster)
        assignments.append(
            endpoint_pb2.ClusterLoadAssignment(
                cluster_name=c.name,
                endpoints=[
                    endpoint_components_pb2.LocalityLbEndpoints(
                        lb_endpoints=[
                            endpoint_components_pb2.LbEndpoint(
                                endpoint=endpoint_components_pb2.Endpoint(
                                    address=socket_address(e.address, e.port)
                                )
                            )
                            for e in c.endpoints
                        ]
                    )
                ],
            )
        )
    return {
        types.CLUSTER: clusters,
        types.ENDPOINT: assignments,
        # Envoy refuses a listener without filter chains: an ingress with nothing to serve has no listener yet
        types.LISTENER: [listener(ir)] if ir.routes else [],
        types.ROUTE: [],
        types.SECRET: [],
    }
