"""MeshLoadBalancingStrategy -> Envoy: the cluster's lb_policy and its options, and the route hash policies
that consistent-hash balancers (RingHash, Maglev) hash on."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2

from isthmus.ir.traffic import LoadBalancer
from isthmus.xds.translate.common import duration_ms

ENVOY_MIN_RING = 1024  # Envoy's default minimum_ring_size; it refuses a maximum below the minimum
_POLICIES = {
    "RoundRobin": cluster_pb2.Cluster.ROUND_ROBIN,
    "LeastRequest": cluster_pb2.Cluster.LEAST_REQUEST,
    "RingHash": cluster_pb2.Cluster.RING_HASH,
    "Random": cluster_pb2.Cluster.RANDOM,
    "Maglev": cluster_pb2.Cluster.MAGLEV,
}


def cluster(out: cluster_pb2.Cluster, lb: LoadBalancer | None) -> None:
    if lb is None:
        return
    out.lb_policy = _POLICIES[lb.type]
    if lb.locality is not None and lb.locality.affinity_tags:  # localZone.affinityTags: weighted groups
        out.common_lb_config.locality_weighted_lb_config.SetInParent()
    if lb.type == "LeastRequest" and (lb.choice_count is not None or lb.active_request_bias is not None):
        if lb.choice_count is not None:
            out.least_request_lb_config.choice_count.value = lb.choice_count
        if lb.active_request_bias is not None:
            out.least_request_lb_config.active_request_bias.default_value = lb.active_request_bias
            out.least_request_lb_config.active_request_bias.runtime_key = "upstream.least_request.bias"
    if lb.type == "RingHash":
        ring = out.ring_hash_lb_config
        low, high = lb.min_ring_size, lb.max_ring_size
        if high is not None and (low if low is not None else ENVOY_MIN_RING) > high:
            low = high  # a maximum below Envoy's default minimum, or bounds crossed by merged policies
        if low is not None:
            ring.minimum_ring_size.value = low
        if high is not None:
            ring.maximum_ring_size.value = high
        if lb.hash_function == "MurmurHash2":
            ring.hash_function = cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2
    if lb.type == "Maglev" and lb.table_size is not None:
        out.maglev_lb_config.table_size.value = lb.table_size


def route(action: route_components_pb2.RouteAction, lb: LoadBalancer | None) -> None:
    """Hash policies for the route; called by :mod:`routes` for every route action of an outbound."""
    if lb is None:
        return
    for h in lb.hash_policies:
        policy = route_components_pb2.RouteAction.HashPolicy(terminal=h.terminal)
        if h.type == "Header":
            policy.header.header_name = h.name
        elif h.type == "Cookie":
            policy.cookie.name = h.name
            if h.ttl_ms is not None:
                policy.cookie.ttl.CopyFrom(duration_ms(h.ttl_ms))
            if h.path is not None:
                policy.cookie.path = h.path
        elif h.type == "QueryParameter":
            policy.query_parameter.name = h.name
        elif h.type == "FilterState":
            policy.filter_state.key = h.name
        else:
            policy.connection_properties.source_ip = True
        action.hash_policy.append(policy)
