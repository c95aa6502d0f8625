"""Envoy resources of a transparent proxy (:mod:`isthmus.ir.transparent`): the catch-all listeners on the
redirect ports and the clusters that send a connection on to its original destination.

Names follow Kuma's (``outbound:passthrough:ipv4``, ``inbound:passthrough:ipv4``), so stats and
``isthmus inspect`` read as a Kuma user expects.
"""

from __future__ import annotations

from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ir.transparent import INBOUND_PASSTHROUGH_SOURCE, TransparentProxy
from isthmus.xds.translate.common import pack, socket_address

OUTBOUND_PASSTHROUGH = "outbound:passthrough:ipv4"
INBOUND_PASSTHROUGH = "inbound:passthrough:ipv4"
BLACKHOLE = "outbound:passthrough:blackhole"  # passthrough false: no endpoint, the connection is closed
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ANY = "0.0.0.0"
CONNECT_TIMEOUT_S = 10


def _catch_all(name: str, port: int, cluster: str, direction: int) -> listener_pb2.Listener:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name.replace(":", "_"), cluster=cluster)
    return listener_pb2.Listener(
        name=name,
        address=socket_address(ANY, port),
        use_original_dst={"value": True},  # hand the connection to the listener of its original destination
        traffic_direction=direction,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
            )
        ],
    )


@lru_cache(maxsize=64)
def listeners(tp: TransparentProxy) -> tuple[listener_pb2.Listener, ...]:
    outbound_cluster = OUTBOUND_PASSTHROUGH if tp.passthrough else BLACKHOLE
    return (
        _catch_all(OUTBOUND_PASSTHROUGH, tp.outbound_port, outbound_cluster, base_pb2.OUTBOUND),
        _catch_all(INBOUND_PASSTHROUGH, tp.inbound_port, INBOUND_PASSTHROUGH, base_pb2.INBOUND),
    )


def _original_dst(name: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    cluster.connect_timeout.seconds = CONNECT_TIMEOUT_S
    return cluster


@lru_cache(maxsize=64)
def clusters(tp: TransparentProxy) -> tuple[cluster_pb2.Cluster, ...]:
    inbound = _original_dst(INBOUND_PASSTHROUGH)
    # from 127.0.0.6: the rules let it through instead of redirecting it back to the inbound catch-all
    inbound.upstream_bind_config.CopyFrom(
        address_pb2.BindConfig(
            source_address=address_pb2.SocketAddress(address=INBOUND_PASSTHROUGH_SOURCE, port_value=0)
        )
    )
    if tp.passthrough:
        outbound = _original_dst(OUTBOUND_PASSTHROUGH)
    else:
        outbound = cluster_pb2.Cluster(name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC)
        outbound.connect_timeout.seconds = CONNECT_TIMEOUT_S
    return outbound, inbound
