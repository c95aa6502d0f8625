"""What zipkin and opentelemetry share: per-route sampling and tags, and the collector cluster.

Envoy traces on the HCM with one tracer (``tracing.provider``), so a workspace's tracing configurations must agree
on the collector (:func:`workspace_errors`, checked when a plugin is written); what may differ per route is the
sampling rate (the route's ``tracing.random_sampling``; routes without a tracing plugin sample nothing themselves),
the tags and the trace-id response header.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from isthmus.gateway.plugins import EnvoyRoute, kong_log

TRACERS = ("zipkin", "opentelemetry")
_MILLION = 1_000_000


def sampled(
    routes: list[EnvoyRoute],
    ratio: float,
    operation: str,
    tags: list[dict[str, Any]],
    trace_id_header: str | None,
) -> list[EnvoyRoute]:
    """``routes`` sampling ``ratio`` of the requests that carry no sampling decision, with ``tags`` on their
    spans and the trace id in ``trace_id_header`` of the response."""
    tracing: dict[str, Any] = {
        "random_sampling": {"numerator": round(ratio * _MILLION), "denominator": "MILLION"},
        "client_sampling": {"numerator": 100, "denominator": "HUNDRED"},
        "overall_sampling": {"numerator": 100, "denominator": "HUNDRED"},
        "operation": operation,
    }
    if tags:
        tracing["custom_tags"] = tags
    out = []
    for r in routes:
        route = {**r, "tracing": tracing}
        if trace_id_header:
            route["response_headers_to_add"] = [
                *r.get("response_headers_to_add", []),
                {
                    "header": {"key": trace_id_header, "value": "%TRACE_ID%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ]
        out.append(route)
    return out


def collector_cluster(name: str, endpoint: str, connect_timeout_ms: float) -> dict[str, Any]:
    """A cluster for the collector at ``endpoint`` (a URL): TLS for https, DNS for a host name."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        import ipaddress

        ipaddress.ip_address(host)
        dns = False
    except ValueError:
        dns = True
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": f"{max(connect_timeout_ms, 1) / 1000:g}s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if parts.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        }
    return cluster


def path_of(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def configs(
    plugins: Iterable[Mapping[str, Any]], parse: Callable[[str, Mapping[str, Any]], BaseModel]
) -> list[tuple[str, BaseModel]]:
    """The enabled tracing configurations (plugin name, config), by plugin id."""
    out = []
    for plugin in sorted(plugins, key=lambda p: str(p.get("id"))):
        name = str(plugin.get("name"))
        if name in TRACERS and plugin.get("enabled", True):
            out.append((name, parse(name, plugin.get("config") or {})))
    return out


def workspace_errors(
    plugins: Iterable[Mapping[str, Any]],
    candidate: Mapping[str, Any],
    collector: Callable[[str, BaseModel], Mapping[str, Any]],
    parse: Callable[[str, Mapping[str, Any]], BaseModel],
) -> dict[str, str]:
    """Kong's config fields of ``candidate`` (a tracing plugin) that the gateway's one tracer cannot honour beside
    the workspace's other tracing ``plugins``: another tracer, or the same one with another collector."""
    if candidate.get("name") not in TRACERS or not candidate.get("enabled", True):
        return {}
    others = [p for p in plugins if str(p.get("id")) != str(candidate.get("id"))]
    mine = (str(candidate["name"]), parse(str(candidate["name"]), candidate.get("config") or {}))
    mine_collector = collector(*mine)
    for name, config in configs(others, parse):
        if name != mine[0]:
            return {"name": f"'{mine[0]}' beside '{name}' in one workspace is not supported yet"}
        theirs = collector(name, config)
        for field, value in mine_collector.items():
            if theirs.get(field) != value:
                return {
                    f"config.{field}": f"a value other than the workspace's other {name} plugins' "
                    f"({json.dumps(theirs.get(field))}) is not supported yet"
                }
    return {}


def marked(name: str, config: BaseModel, identity: Mapping[str, str | None], routes: list[EnvoyRoute]) -> list[EnvoyRoute]:  # fmt: skip
    return kong_log.mark(routes, name, kong_log.key(name, config), identity)
