"""An egress's IR -> Envoy resources: a listener with the TLS inspector and one filter chain per SNI. Chains to
other zones are TCP proxies with no transport socket (TLS passes through); chains to MeshExternalServices end the
mesh's mTLS with the egress's certificate of that mesh and reach the service through its cluster (HTTP through a
connection manager, TCP through a TCP proxy). Clusters and endpoints are translated as a sidecar's are."""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.egress.build import EgressChain, EgressIR
from isthmus.ir.build import ca_secret_name, identity_secret_name
from isthmus.ir.model import MeshTls, Protocol, Secret
from isthmus.xds import types
from isthmus.xds.translate import clusters as cluster_xds
from isthmus.xds.translate import secrets as secret_xds
from isthmus.xds.translate import tls as tls_xds
from isthmus.xds.translate.common import pack, socket_address

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"


def stat_prefix(chain: EgressChain) -> str:
    """``egress_<cluster>`` with Envoy-safe characters: ``tcp.<prefix>.*`` / ``http.<prefix>.*`` stats."""
    return "egress_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in chain.cluster)


def _filter(chain: EgressChain) -> listener_components_pb2.Filter:
    if chain.terminate and chain.protocol is not Protocol.TCP:
        route = route_pb2.RouteConfiguration(
            name=chain.cluster,
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=chain.cluster,
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=route_components_pb2.RouteAction(cluster=chain.cluster),
                        )
                    ],
                )
            ],
        )
        hcm = hcm_pb2.HttpConnectionManager(
            stat_prefix=stat_prefix(chain),
            codec_type=hcm_pb2.HttpConnectionManager.AUTO,
            route_config=route,
            http_filters=[hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))],
        )
        return listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix(chain), cluster=chain.cluster)
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))


def listener(ir: EgressIR) -> listener_pb2.Listener:
    out = listener_pb2.Listener(
        name=f"inbound:{ir.address}:{ir.port}",
        address=socket_address(ir.address, ir.port),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        ],
        stat_prefix=f"zoneegress_{ir.name}",
    )
    for chain in ir.chains:
        fc = listener_components_pb2.FilterChain(
            name=chain.cluster,
            filter_chain_match=listener_components_pb2.FilterChainMatch(
                server_names=list(chain.server_names), transport_protocol="tls"
            ),
            filters=[_filter(chain)],
        )
        if chain.terminate:
            mesh_tls = MeshTls(identity_secret_name(chain.mesh), ca_secret_name(chain.mesh))
            fc.transport_socket.CopyFrom(tls_xds.downstream_socket(mesh_tls, f"spiffe://{chain.mesh}/"))
        out.filter_chains.append(fc)
    return out


def translate_egress(ir: EgressIR, secrets: tuple[Secret, ...] = ()) -> dict[str, list[Any]]:
    """``secrets``: the egress's certificate and CA bundle of each mesh it terminates mTLS for."""
    return {
        types.CLUSTER: [cluster_xds.cluster(c) for c in ir.clusters],
        types.ENDPOINT: [cluster_xds.endpoints(e) for e in ir.endpoints],
        # Envoy refuses a listener without filter chains: an egress with nothing to serve has no listener yet
        types.LISTENER: [listener(ir)] if ir.chains else [],
        types.ROUTE: [],
        types.SECRET: [secret_xds.secret(s) for s in secrets],
    }
