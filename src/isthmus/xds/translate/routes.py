"""Outbound routing: the RouteConfiguration of an HTTP outbound (MeshHTTPRoute) and the TCP proxy of a TCP
outbound (MeshTCPRoute). Without routes, everything goes to the outbound's cluster."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ir.model import OutboundListener
from isthmus.xds.translate import load_balancing, retries, timeouts


def route_configuration(ir: OutboundListener) -> route_pb2.RouteConfiguration:
    action = route_components_pb2.RouteAction(cluster=ir.cluster)
    timeouts.route(action, ir.timeouts)
    retries.route(action, ir.retry, ir.protocol)
    load_balancing.route(action, ir.lb)
    return route_pb2.RouteConfiguration(
        name=ir.route_config,
        validate_clusters={"value": False},
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=ir.service,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action
                    )
                ],
            )
        ],
    )


def tcp_proxy(stat_prefix: str, ir: OutboundListener) -> tcp_proxy_pb2.TcpProxy:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=ir.cluster)
    timeouts.tcp_proxy(proxy, ir.timeouts)
    retries.tcp_proxy(proxy, ir.retry)
    return proxy
