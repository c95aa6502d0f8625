"""MeshCircuitBreaker, MeshHealthCheck and MeshLoadBalancingStrategy -> Envoy cluster fields.

``cluster(out, ir)`` is called by :func:`isthmus.xds.translate.clusters.cluster` for every cluster; each part
only touches the fields of its own IR attribute (``limits``, ``outlier``, ``health_check``, ``lb``).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from isthmus.ir.model import Cluster
from isthmus.xds.translate import load_balancing


def cluster(out: cluster_pb2.Cluster, ir: Cluster) -> None:
    """Circuit breakers, outlier detection, active health checks and the load balancer of one cluster."""
    # filled in per policy (issue 3): limits/outlier (MeshCircuitBreaker), health_check (MeshHealthCheck)
    load_balancing.cluster(out, ir.lb)
