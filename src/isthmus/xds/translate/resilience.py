"""MeshCircuitBreaker and MeshHealthCheck -> Envoy cluster fields (and the load balancer via
:mod:`load_balancing`). Each part only touches the fields of its own IR attribute."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.type.v3 import http_pb2, percent_pb2, range_pb2

from isthmus.ir.model import Cluster, Protocol
from isthmus.ir.traffic import ConnectionLimits, HealthCheck, OutlierDetection
from isthmus.xds.translate import load_balancing
from isthmus.xds.translate.common import duration_ms


def _thresholds(limits: ConnectionLimits) -> circuit_breaker_pb2.CircuitBreakers:
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for field, value in (
        ("max_connections", limits.max_connections),
        ("max_pending_requests", limits.max_pending_requests),
        ("max_requests", limits.max_requests),
        ("max_retries", limits.max_retries),
        ("max_connection_pools", limits.max_connection_pools),
    ):
        if value is not None:
            getattr(t, field).value = value
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def _outlier(o: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection()
    if o.interval_ms is not None:
        out.interval.CopyFrom(duration_ms(o.interval_ms))
    if o.base_ejection_time_ms is not None:
        out.base_ejection_time.CopyFrom(duration_ms(o.base_ejection_time_ms))
    if o.split_external_and_local_errors is not None:
        out.split_external_local_origin_errors = o.split_external_and_local_errors
    # a detector Kuma's conf leaves out is disabled, not left at Envoy's default
    out.enforcing_consecutive_5xx.value = 100 if o.consecutive_5xx is not None else 0
    if o.consecutive_5xx is not None:
        out.consecutive_5xx.value = o.consecutive_5xx
    out.enforcing_consecutive_gateway_failure.value = 100 if o.consecutive_gateway_failure is not None else 0
    if o.consecutive_gateway_failure is not None:
        out.consecutive_gateway_failure.value = o.consecutive_gateway_failure
    if o.consecutive_local_origin_failure is not None:
        out.consecutive_local_origin_failure.value = o.consecutive_local_origin_failure
        out.enforcing_consecutive_local_origin_failure.value = 100
    sr = o.success_rate_request_volume is not None or o.success_rate_minimum_hosts is not None
    out.enforcing_success_rate.value = 100 if sr or o.success_rate_stdev_factor is not None else 0
    if o.success_rate_minimum_hosts is not None:
        out.success_rate_minimum_hosts.value = o.success_rate_minimum_hosts
    if o.success_rate_request_volume is not None:
        out.success_rate_request_volume.value = o.success_rate_request_volume
    if o.success_rate_stdev_factor is not None:
        out.success_rate_stdev_factor.value = o.success_rate_stdev_factor
    if o.failure_percentage_threshold is not None:
        out.failure_percentage_threshold.value = o.failure_percentage_threshold
        out.enforcing_failure_percentage.value = 100
    if o.failure_percentage_minimum_hosts is not None:
        out.failure_percentage_minimum_hosts.value = o.failure_percentage_minimum_hosts
    if o.failure_percentage_request_volume is not None:
        out.failure_percentage_request_volume.value = o.failure_percentage_request_volume
    if o.max_ejection_percent is not None:
        out.max_ejection_percent.value = o.max_ejection_percent
    return out


def _health_check(h: HealthCheck, http2: bool) -> health_check_pb2.HealthCheck:
    out = health_check_pb2.HealthCheck(
        timeout=duration_ms(h.timeout_ms),
        interval=duration_ms(h.interval_ms),
    )
    out.unhealthy_threshold.value = h.unhealthy_threshold
    out.healthy_threshold.value = h.healthy_threshold
    if h.initial_jitter_ms is not None:
        out.initial_jitter.CopyFrom(duration_ms(h.initial_jitter_ms))
    if h.interval_jitter_ms is not None:
        out.interval_jitter.CopyFrom(duration_ms(h.interval_jitter_ms))
    if h.no_traffic_interval_ms is not None:
        out.no_traffic_interval.CopyFrom(duration_ms(h.no_traffic_interval_ms))
    if h.reuse_connection is not None:
        out.reuse_connection.value = h.reuse_connection
    if h.http_path is not None:
        http = health_check_pb2.HealthCheck.HttpHealthCheck(path=h.http_path)
        if http2:  # sidecars talk HTTP/2 to each other (ALPN h2): the checker must too
            http.codec_client_type = http_pb2.HTTP2
        for code in h.http_expected_statuses:
            http.expected_statuses.append(range_pb2.Int64Range(start=code, end=code + 1))
        for key, value in h.http_request_headers:
            http.request_headers_to_add.add().header.MergeFrom(base_pb2.HeaderValue(key=key, value=value))
        out.http_health_check.CopyFrom(http)
    else:
        tcp = health_check_pb2.HealthCheck.TcpHealthCheck()
        if h.tcp_send:  # an empty payload is no payload (Envoy refuses an empty one)
            tcp.send.text = h.tcp_send.encode().hex()
        for text in h.tcp_receive:
            if text:
                tcp.receive.add().text = text.encode().hex()
        out.tcp_health_check.CopyFrom(tcp)
    return out


def cluster(out: cluster_pb2.Cluster, ir: Cluster) -> None:
    """Circuit breakers, outlier detection, active health checks and the load balancer of one cluster."""
    if ir.limits is not None:
        out.circuit_breakers.CopyFrom(_thresholds(ir.limits))
    if ir.outlier is not None:
        out.outlier_detection.CopyFrom(_outlier(ir.outlier))
    if ir.health_check is not None:
        out.health_checks.append(_health_check(ir.health_check, ir.protocol is Protocol.HTTP2))
        if ir.health_check.healthy_panic_threshold is not None:
            out.common_lb_config.healthy_panic_threshold.CopyFrom(
                percent_pb2.Percent(value=ir.health_check.healthy_panic_threshold)
            )
    load_balancing.cluster(out, ir.lb)
