"""MeshCircuitBreaker: Envoy circuit breaker thresholds and outlier detection on the destination's clusters
(``to``) or on the local application cluster (``from``/``rules``)."""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster
from isthmus.ir.traffic import ConnectionLimits, OutlierDetection
from isthmus.policies.engine import Resolved
from isthmus.policies.meshcircuitbreaker.api import Conf, MeshCircuitBreakerSpec
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms


def _limits(conf: Conf) -> ConnectionLimits | None:
    c = conf.connection_limits
    if c is None:
        return None
    return ConnectionLimits(
        max_connections=c.max_connections,
        max_connection_pools=c.max_connection_pools,
        max_pending_requests=c.max_pending_requests,
        max_requests=c.max_requests,
        max_retries=c.max_retries,
    )


def _outlier(conf: Conf) -> OutlierDetection | None:
    o = conf.outlier_detection
    if o is None or o.disabled:
        return None
    d = o.detectors
    sr = d.success_rate if d else None
    fp = d.failure_percentage if d else None
    stdev = None
    if sr is not None and sr.standard_deviation_factor is not None:
        stdev = int(float(sr.standard_deviation_factor) * 1000)
    return OutlierDetection(
        interval_ms=duration_ms(o.interval) if o.interval else None,
        base_ejection_time_ms=duration_ms(o.base_ejection_time) if o.base_ejection_time else None,
        max_ejection_percent=o.max_ejection_percent,
        split_external_and_local_errors=o.split_external_and_local_errors,
        consecutive_5xx=d.total_failures.consecutive if d and d.total_failures else None,
        consecutive_gateway_failure=d.gateway_failures.consecutive if d and d.gateway_failures else None,
        consecutive_local_origin_failure=(
            d.local_origin_failures.consecutive if d and d.local_origin_failures else None
        ),
        success_rate_minimum_hosts=sr.minimum_hosts if sr else None,
        success_rate_request_volume=sr.request_volume if sr else None,
        success_rate_stdev_factor=stdev,
        failure_percentage_threshold=fp.threshold if fp else None,
        failure_percentage_minimum_hosts=fp.minimum_hosts if fp else None,
        failure_percentage_request_volume=fp.request_volume if fp else None,
    )


class MeshCircuitBreakerPlugin(ToFromPlugin):
    resource_type = policy_type("MeshCircuitBreaker", "meshcircuitbreakers", MeshCircuitBreakerSpec, "mcb")
    order = 1300
    conf_model = Conf

    def edit_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return evolve(cluster, limits=derived(_limits, conf), outlier=derived(_outlier, conf))

    def edit_local_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return evolve(cluster, limits=derived(_limits, conf), outlier=derived(_outlier, conf))


PLUGIN = MeshCircuitBreakerPlugin()
