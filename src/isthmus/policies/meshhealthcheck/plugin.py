"""MeshHealthCheck: active health checks on the destination's clusters. HTTP services get an HTTP check
(``http.path``, default ``/``) unless ``http.disabled``; TCP services, or HTTP with the HTTP check disabled, a TCP
check. Defaults follow Kuma: every 1m, 15s timeout, unhealthy after 5 failures, healthy after 1 success."""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, Protocol
from isthmus.ir.traffic import HealthCheck
from isthmus.policies.engine import Resolved
from isthmus.policies.meshhealthcheck.api import Conf, MeshHealthCheckSpec
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms


def health_check(conf: Conf, protocol: Protocol) -> HealthCheck | None:
    http_off = conf.http is not None and bool(conf.http.disabled)
    tcp_off = conf.tcp is not None and bool(conf.tcp.disabled)
    use_http = protocol is not Protocol.TCP and not http_off
    if not use_http and tcp_off:
        return None
    interval = duration_ms(conf.interval or "1m")
    jitter = None
    if conf.interval_jitter is not None:
        jitter = duration_ms(conf.interval_jitter)
    elif conf.interval_jitter_percent is not None:
        jitter = interval * conf.interval_jitter_percent // 100
    headers: list[tuple[str, str]] = []
    if use_http and conf.http and conf.http.request_headers_to_add:
        extra = conf.http.request_headers_to_add
        headers = [(h.name, h.value) for h in [*(extra.set or []), *(extra.add or [])]]
    return HealthCheck(
        interval_ms=interval,
        timeout_ms=duration_ms(conf.timeout or "15s"),
        unhealthy_threshold=conf.unhealthy_threshold or 5,
        healthy_threshold=conf.healthy_threshold or 1,
        initial_jitter_ms=duration_ms(conf.initial_jitter) if conf.initial_jitter else None,
        interval_jitter_ms=jitter,
        no_traffic_interval_ms=duration_ms(conf.no_traffic_interval) if conf.no_traffic_interval else None,
        reuse_connection=conf.reuse_connection,
        http_path=((conf.http.path if conf.http else None) or "/") if use_http else None,
        http_expected_statuses=tuple(conf.http.expected_statuses or ()) if use_http and conf.http else (),
        http_request_headers=tuple(headers),
        tcp_send=conf.tcp.send if conf.tcp and not use_http else None,
        tcp_receive=tuple(conf.tcp.receive or ()) if conf.tcp and not use_http else (),
        healthy_panic_threshold=(
            float(conf.healthy_panic_threshold) if conf.healthy_panic_threshold is not None else None
        ),
    )


class MeshHealthCheckPlugin(ToFromPlugin):
    resource_type = policy_type("MeshHealthCheck", "meshhealthchecks", MeshHealthCheckSpec, "mhc")
    order = 1200
    conf_model = Conf

    def edit_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return evolve(cluster, health_check=derived(health_check, conf, cluster.protocol))


PLUGIN = MeshHealthCheckPlugin()
