"""The HCM side of Kong's logging, metrics and tracing plugins: what every gateway listener's HCM gets from a
workspace's file-log, tcp-log, http-log, prometheus, zipkin and opentelemetry configurations.

Envoy's access logs and tracer live on the HCM, not on routes. So each distinct configuration of a logging or
metrics plugin is one HCM access log whose filter (a CEL expression on the route's ``isthmus.kong`` metadata)
selects the routes that configuration applies to: the routes carry the key of the configuration Kong's
precedence picks for them (:mod:`isthmus.gateway.plugins.kong_log`), including the consumer route copies. The
tracer is the workspace's zipkin or opentelemetry collector (one per workspace: ``workspace_errors`` refuses a
second collector at apply); each route samples at its own configuration's rate, routes without one start no trace.
:func:`hcm` is called by :func:`isthmus.gateway.translate.translate` for every listener.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from isthmus.gateway import upstream_health
from isthmus.gateway.plugins import (  # fmt: skip
    file_log,
    http_log,
    kinds,
    kong_log,
    opentelemetry,
    prometheus,
    tcp_log,
    tracing,
    zipkin,
)

LOGGERS: dict[str, Callable[[Any], dict[str, Any] | None]] = {
    file_log.NAME: file_log.access_log,
    tcp_log.NAME: tcp_log.access_log,
    http_log.NAME: http_log.access_log,
    prometheus.NAME: prometheus.access_log,
}
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_NO_SAMPLING = {"value": 0}
_ALL = {"value": 100}


def _parse(name: str, config: Mapping[str, Any]) -> BaseModel:
    return kinds()[name].config.model_validate(dict(config))


def _enabled(plugins: Iterable[Mapping[str, Any]], names: Iterable[str]) -> list[Mapping[str, Any]]:
    wanted = set(names)
    return sorted(
        (p for p in plugins if p.get("name") in wanted and p.get("enabled", True)),
        key=lambda p: str(p.get("id")),
    )


def access_logs(plugins: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One access log per distinct logging/metrics configuration, in a stable order."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for plugin in _enabled(plugins, LOGGERS):
        name = str(plugin["name"])
        config: Any = _parse(name, plugin.get("config") or {})
        key = (name, kong_log.key(name, config))
        if key not in out:
            log = LOGGERS[name](config)
            if log is not None:
                out[key] = log
    return [out[k] for k in sorted(out)]


def _collector(name: str, config: BaseModel) -> Mapping[str, Any]:
    if isinstance(config, zipkin.Config):
        return zipkin.collector(config)
    assert isinstance(config, opentelemetry.Config)
    return opentelemetry.collector(config)


def tracer(workspace: str, plugins: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:  # fmt: skip
    """(the HCM's ``tracing``, the collector's cluster): the workspace's first tracing configuration's collector
    (they all share it)."""
    found = tracing.configs(plugins, _parse)
    if not found:
        return None, None
    _name, config = found[0]
    if isinstance(config, zipkin.Config):
        provider, cluster = zipkin.provider(workspace, config)
        if cluster is None:  # propagation only: spans go nowhere
            cluster = {"name": f"kong:{workspace}:zipkin", "type": "STATIC", "connect_timeout": "1s"}
    else:
        assert isinstance(config, opentelemetry.Config)
        provider, cluster = opentelemetry.provider(workspace, config)
    hcm_tracing = {
        "provider": provider,
        "random_sampling": _NO_SAMPLING,
        "client_sampling": _ALL,
        "overall_sampling": _ALL,
        "spawn_upstream_span": False,
    }
    return hcm_tracing, cluster


def hcm(workspace: str, entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """(the fields every gateway HCM gets: ``access_log``, ``tracing``; the clusters they name, and prometheus's
    upstream-health cluster for the gateway agent)."""
    plugins = list(entities.get("plugins", {}).values())
    fields: dict[str, Any] = {}
    clusters: list[dict[str, Any]] = []
    logs = access_logs(plugins)
    if logs:
        fields["access_log"] = logs
    hcm_tracing, cluster = tracer(workspace, plugins)
    if hcm_tracing is not None:
        fields["tracing"] = hcm_tracing
    if cluster is not None:
        clusters.append(cluster)
    # prometheus's upstream_health_metrics: which clusters hold which Upstream's targets, for the gateway agent
    health = upstream_health.marker_cluster(workspace, entities)
    if health is not None:
        clusters.append(health)
    return fields, clusters


_Listener = TypeVar("_Listener", dict[str, Any], dict[str, Any] | None)


def decorate(listener: _Listener, fields: Mapping[str, Any]) -> _Listener:
    """``listener`` (dict form) with ``fields`` set on each of its HCMs."""
    if listener is None or not fields:
        return listener
    chains = [*listener.get("filter_chains", ())]
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for f in chain.get("filters", ()):
            typed = f.get("typed_config") or {}
            if typed.get("@type") == HCM_TYPE:
                typed.update(fields)
    return listener


def workspace_errors(plugins: Iterable[Mapping[str, Any]], candidate: Mapping[str, Any]) -> dict[str, str]:
    """Kong's schema-violation fields when ``candidate`` (a plugin entity about to be written) names another
    tracing collector than the workspace's other tracing plugins (the HCM has one tracer)."""
    if candidate.get("name") not in tracing.TRACERS:
        return {}
    return tracing.workspace_errors(list(plugins), candidate, _collector, _parse)
