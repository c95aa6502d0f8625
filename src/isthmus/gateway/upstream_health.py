"""Kong's ``kong_upstream_target_health`` (the prometheus plugin's ``upstream_health_metrics``) from Envoy's
per-host health flags.

Kong reports, for each Upstream, each target and each address the target resolves to, one gauge per state
(``healthchecks_off``, ``healthy``, ``unhealthy``, ``dns_error``): 1 for the current state, 0 for the others.
A gateway has no Upstream in Envoy: each Kong Service whose host names an Upstream is one Envoy cluster
(``kong:<ws>:service:<id>``) whose endpoints are the Upstream's targets of non-zero weight, with the Upstream's
health checks (:mod:`isthmus.gateway.healthchecks`). So:

* the control plane (:func:`marker_cluster`, called for every workspace translation) adds, when an enabled
  prometheus plugin of the workspace has ``upstream_health_metrics`` on, a cluster ``kong:<ws>:upstream-health``
  with no endpoints (no traffic ever goes there) whose metadata ``isthmus.kong.upstream_health`` lists each
  Upstream: its name, its targets, whether its health checks are on, and the clusters of the Services using it.
  Nothing is added to a request's path, and a target change updates that cluster only (no listener drains);
* the gateway agent, at each scrape, reads that cluster from Envoy's admin ``/config_dump`` (absent: the metric is
  off) and the hosts' health from ``/clusters?format=json`` (:func:`samples`, :func:`render`): a host failing its
  active checks or ejected by outlier detection (Kong's passive checks) is ``unhealthy``, else ``healthy``; every
  host of an Upstream without health checks is ``healthchecks_off``; a host-name target with no resolved host is
  ``dns_error`` (address ``""``). When several Services use one Upstream (several clusters probing the same
  targets), a host unhealthy in any of them is unhealthy, as Kong's one balancer per Upstream would have it.

Differences from Kong: an Upstream no Service uses has no Envoy cluster, hence no probes and no DNS resolution:
its IP targets are reported ``healthchecks_off`` when its health checks are off, and nothing is reported for it
otherwise; targets of weight 0 (no endpoint in Envoy) are not reported.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from isthmus.gateway import healthchecks
from isthmus.gateway.envoy_routes import cluster_name as service_cluster
from isthmus.gateway.envoy_routes import mesh_service
from isthmus.gateway.plugins import prometheus

METADATA = "isthmus.kong.upstream_health"
NAME = "kong_upstream_target_health"
HELP = (
    "Health status of targets of upstream. States = healthchecks_off|healthy|unhealthy|dns_error, "
    "value is 1 when state is populated."
)
STATES = ("healthchecks_off", "healthy", "unhealthy", "dns_error")
SUBSYSTEM = "http"


def marker_name(workspace: str) -> str:
    return f"kong:{workspace}:upstream-health"


# -- the control plane: what the gateway's Envoy is told -----------------------------------------------------------


def enabled(plugins: Iterable[Mapping[str, Any]]) -> bool:
    """Kong's rule: the metric is exported once any enabled prometheus plugin turns it on."""
    return any(
        p.get("name") == prometheus.NAME
        and p.get("enabled", True)
        and prometheus.Config.model_validate(dict(p.get("config") or {})).upstream_health_metrics
        for p in plugins
    )


def _split(target: str) -> tuple[str, int]:
    """A stored (normalized) target ``host:port`` / ``[v6]:port`` as (host without brackets, port)."""
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def marker_cluster(
    workspace: str, entities: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, Any] | None:
    """The ``kong:<ws>:upstream-health`` cluster (dict form), or None when no prometheus plugin asks for it."""
    if not enabled(entities.get("plugins", {}).values()):
        return None
    by_host: dict[str, list[str]] = {}
    for _, service in sorted(entities.get("services", {}).items()):
        if mesh_service(service) is None:
            by_host.setdefault(str(service.get("host") or ""), []).append(
                service_cluster(workspace, str(service["id"]))
            )
    targets: dict[str, list[str]] = {}
    for t in entities.get("targets", {}).values():
        ref = t.get("upstream")
        if isinstance(ref, Mapping) and ref.get("id") and int(t.get("weight", 100)) > 0:
            targets.setdefault(str(ref["id"]), []).append(str(t["target"]))
    upstreams = []
    for upstream in sorted(entities.get("upstreams", {}).values(), key=lambda u: str(u["name"])):
        checks = upstream.get("healthchecks")
        on = isinstance(checks, Mapping) and (
            healthchecks.active_enabled(checks) or healthchecks.passive_enabled(checks)
        )
        upstreams.append(
            {
                "name": str(upstream["name"]),
                "healthchecks": on,
                "clusters": by_host.get(str(upstream["name"]), []),
                "targets": sorted(targets.get(str(upstream["id"]), [])),
            }
        )
    return {
        "name": marker_name(workspace),
        "type": "STATIC",
        "connect_timeout": "1s",
        "metadata": {"filter_metadata": {METADATA: {"upstreams": upstreams}}},
    }


# -- the gateway agent: Envoy's admin outputs in, Kong's metric out -------------------------------------------------


class Sample(NamedTuple):
    upstream: str
    target: str
    address: str
    state: str


def upstreams(config_dump_text: str) -> list[dict[str, Any]] | None:
    """The Upstreams listed by the marker cluster in Envoy's ``/config_dump?resource=dynamic_active_clusters``
    (filtered by name or not), or None when there is no marker cluster (the metric is off)."""
    dump = json.loads(config_dump_text or "{}")
    for entry in dump.get("configs", ()):
        cluster = entry.get("cluster") or {}
        metadata = (cluster.get("metadata") or {}).get("filter_metadata") or {}
        if METADATA in metadata and str(cluster.get("name", "")).endswith(":upstream-health"):
            found: list[dict[str, Any]] = list(metadata[METADATA].get("upstreams") or [])
            return found
    return None


def _address(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unhealthy(status: Mapping[str, Any]) -> bool:
    return bool(
        status.get("failed_active_health_check")
        or status.get("failed_outlier_check")
        or status.get("eds_health_status") in ("UNHEALTHY", "TIMEOUT")
    )


def _hosts(clusters_text: str) -> dict[str, list[tuple[str, str, int, bool]]]:
    """Envoy's ``/clusters?format=json``: cluster name -> [(hostname, address, port, unhealthy)]."""
    out: dict[str, list[tuple[str, str, int, bool]]] = {}
    for cluster in json.loads(clusters_text or "{}").get("cluster_statuses", ()):
        hosts = out.setdefault(str(cluster.get("name")), [])
        for host in cluster.get("host_statuses", ()):
            socket = (host.get("address") or {}).get("socket_address") or {}
            hosts.append(
                (
                    str(host.get("hostname") or socket.get("address") or ""),
                    str(socket.get("address") or ""),
                    int(socket.get("port_value") or 0),
                    _unhealthy(host.get("health_status") or {}),
                )
            )
    return out


def samples(marked: list[dict[str, Any]], clusters_text: str) -> list[Sample]:
    """Each (upstream, target, address) with its current state, in the marker's order."""
    hosts = _hosts(clusters_text)
    out: list[Sample] = []
    for upstream in marked:
        name, checks = str(upstream.get("name")), bool(upstream.get("healthchecks"))
        clusters = [str(c) for c in upstream.get("clusters") or () if str(c) in hosts]
        for target in upstream.get("targets") or ():
            host, port = _split(str(target))
            if not clusters:
                if not checks and _is_ip(host):
                    out.append(Sample(name, str(target), _address(host, port), "healthchecks_off"))
                continue
            states: dict[str, bool] = {}
            for cluster in clusters:
                for hostname, address, hport, unhealthy in hosts[cluster]:
                    if hostname.strip("[]").lower() == host.lower() and hport == port:
                        key = _address(address, hport)
                        states[key] = states.get(key, False) or unhealthy
            if not states:
                out.append(Sample(name, str(target), "", "dns_error"))
                continue
            for address, unhealthy in sorted(states.items()):
                state = "unhealthy" if unhealthy else "healthy"
                out.append(Sample(name, str(target), address, state if checks else "healthchecks_off"))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(found: list[Sample]) -> str:
    """Kong's exposition of the gauge: four samples (one per state) for each target address."""
    if not found:
        return ""
    lines = [f"# HELP {NAME} {HELP}", f"# TYPE {NAME} gauge"]
    for s in found:
        for state in STATES:
            labels = (
                f'upstream="{_escape(s.upstream)}",target="{_escape(s.target)}",'
                f'address="{_escape(s.address)}",state="{state}",subsystem="{SUBSYSTEM}"'
            )
            lines.append(f"{NAME}{{{labels}}} {1 if state == s.state else 0}")
    return "\n".join(lines) + "\n"
