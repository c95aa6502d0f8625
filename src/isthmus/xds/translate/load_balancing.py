"""MeshLoadBalancingStrategy -> Envoy: the cluster's lb_policy and its options, and the route hash policies
that consistent-hash balancers (RingHash, Maglev) hash on."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2

from isthmus.ir.traffic import LoadBalancer


def cluster(out: cluster_pb2.Cluster, lb: LoadBalancer | None) -> None:
    return None


def route(action: route_components_pb2.RouteAction, lb: LoadBalancer | None) -> None:
    """Hash policies for the route; called by :mod:`routes` for every route action of an outbound."""
    return None
