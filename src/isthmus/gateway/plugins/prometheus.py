"""prometheus: Kong's metrics (names and labels) from Envoy's own stats, served by the gateway agent.

Each distinct configuration is one HCM access log of Envoy's stats access logger (``envoy.access_loggers.stats``)
selecting the routes it applies to, which counts and times every request into stats named as Kong's metrics and
tagged with the route's Kong identity (route metadata, :mod:`isthmus.gateway.plugins.kong_log`):

* ``status_code_metrics``: ``kong_http_requests_total{service,route,code,source,workspace[,consumer]}``;
* ``latency_metrics``: ``kong_kong_latency_ms``, ``kong_request_latency_ms``, ``kong_upstream_latency_ms``
  histograms ``{service,route,workspace}`` (Kong's buckets, set in the gateway's bootstrap);
* ``bandwidth_metrics``: ``kong_bandwidth_bytes{service,route,direction,workspace[,consumer]}``;
* ``per_consumer``: the ``consumer`` label (the username the auth filter identified).

* ``upstream_health_metrics`` (once any enabled configuration of the workspace has it, as Kong):
  ``kong_upstream_target_health{upstream,target,address,state,subsystem}`` from the health flags of the hosts of
  the Upstreams' Envoy clusters, computed by the gateway agent at scrape time; the control plane tells it which
  clusters hold which Upstream's targets through a cluster without endpoints (:mod:`isthmus.gateway.upstream_health`),
  so nothing runs per request.

The gateway agent reads them from Envoy's admin API and serves them on its ``--status-listen`` address at
``/metrics``, as Kong's Status API does (:mod:`isthmus.gateway.kong_metrics`), with Kong's node-level metrics
(``kong_nginx_connections_total``, ``kong_nginx_requests_total``, ``kong_datastore_reachable``,
``kong_node_info``: :mod:`isthmus.gateway.kong_node_metrics`), which Kong shows with or without the plugin.
Not supported yet: ``ai_metrics`` (no AI plugins).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.stats.v3 import stats_pb2  # noqa: F401
from pydantic import BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, kong_log

NAME = "prometheus"
STAT_PREFIX = "kong"
# Kong's latency buckets (ms), kong/plugins/prometheus/exporter.lua
LATENCY_BUCKETS = (1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 30000, 60000)  # fmt: skip


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_consumer: bool = False
    status_code_metrics: bool = False
    latency_metrics: bool = False
    bandwidth_metrics: bool = False
    upstream_health_metrics: bool = False
    ai_metrics: bool = False


def checks(config: Config) -> dict[str, str]:
    errors = {}
    if config.ai_metrics:
        errors["ai_metrics"] = "ai_metrics is not supported yet"
    return errors


def identified_apply(
    config: Config, identity: Mapping[str, str | None], routes: list[EnvoyRoute]
) -> list[EnvoyRoute]:
    return kong_log.mark(routes, NAME, kong_log.key(NAME, config), identity)


def _tag(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value_format": value}


def _route_tags() -> list[dict[str, str]]:
    meta = kong_log.METADATA
    return [
        _tag("service", f"%METADATA(ROUTE:{meta}:service)%"),
        _tag("route", f"%METADATA(ROUTE:{meta}:route)%"),
    ]


def _workspace() -> dict[str, str]:
    return _tag("workspace", f"%METADATA(ROUTE:{kong_log.METADATA}:workspace)%")


def _consumer() -> dict[str, str]:
    return _tag("consumer", "%REQ(x-consumer-username)%")


def access_log(config: Config) -> dict[str, Any] | None:
    """The stats access log of one configuration (None when it records nothing)."""
    consumer = [_consumer()] if config.per_consumer else []
    counters: list[dict[str, Any]] = []
    histograms: list[dict[str, Any]] = []
    if config.status_code_metrics:
        tags = [*_route_tags(), _tag("code", "%RESPONSE_CODE%"), _tag("source", "%RESPONSE_CODE_DETAILS%")]
        counters.append(
            {
                "stat": {"name": "http_requests_total", "tags": [*tags, _workspace(), *consumer]},
                "value_fixed": 1,
            }
        )
    if config.bandwidth_metrics:
        for direction, value in (("ingress", "%BYTES_RECEIVED%"), ("egress", "%BYTES_SENT%")):
            tags = [*_route_tags(), _tag("direction", direction), _workspace(), *consumer]
            counters.append({"stat": {"name": "bandwidth_bytes", "tags": tags}, "value_format": value})
    if config.latency_metrics:
        for name, value in (
            ("kong_latency_ms", "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:ms)%"),
            ("request_latency_ms", "%DURATION%"),
            ("upstream_latency_ms", "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%"),
        ):
            histograms.append(
                {
                    "stat": {"name": name, "tags": [*_route_tags(), _workspace()]},
                    "unit": "Milliseconds",
                    "value_format": value,
                }
            )
    if not counters and not histograms:
        return None
    return {
        "name": "envoy.access_loggers.stats",
        "filter": kong_log.route_filter(NAME, kong_log.key(NAME, config)),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
            "stat_prefix": STAT_PREFIX,
            "counters": counters,
            "histograms": histograms,
        },
    }


KIND = PluginKind(
    name=NAME,
    priority=13,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
)
