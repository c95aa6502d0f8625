"""Kong's node-level metrics (those Kong's ``/metrics`` shows whether or not a prometheus plugin is configured)
from the gateway Envoy's own stats. Pure text in, text out; the gateway agent serves the result beside the
prometheus plugin's metrics (:mod:`isthmus.dp.gateway_observability`).

Kong reads nginx's connection counters; the gateway's counterparts are the stats of its listeners and of their
HTTP connection managers (HCM stat prefix ``kong_<port>`` / ``kong_https_<port>``, the admin API's excluded):

* ``kong_nginx_connections_total{node_id,subsystem,state}`` (a gauge, as Kong's):
  ``accepted`` the connections the gateway's listeners accepted (``listener.<address>.downstream_cx_total``),
  ``handled`` the connections the HCMs handled (``downstream_cx_total``), ``total`` the requests
  (``downstream_rq_total``), ``active`` the HCMs' open connections (``downstream_cx_active``), ``writing`` the
  requests in progress (``downstream_rq_active``), ``waiting`` the open connections with no request in progress
  (``active`` minus ``writing``, at least 0; idle keep-alive connections for HTTP/1.1). nginx's ``reading``
  (connections reading a request's headers) is not served: Envoy counts a request as active from its first
  byte, so those are within ``writing``;
* ``kong_nginx_requests_total{node_id,subsystem}``: the requests (``downstream_rq_total``);
* ``kong_datastore_reachable``: 1 while the gateway's Envoy is connected to the control plane (Envoy's
  ``control_plane.connected_state``): the control plane is where a gateway's configuration comes from, Kong's
  database in a traditional deployment;
* ``kong_node_info{node_id,version}`` 1: the gateway's node id (its Envoy's) and the Kong version the Admin API
  reports;
* ``kong_nginx_metric_errors_total``: the scrapes for which the agent could not read Envoy's admin API.

Not served, having no Envoy meaning: ``kong_nginx_timers`` (nginx timers), ``kong_memory_lua_shared_dict_bytes``,
``kong_memory_lua_shared_dict_total_bytes`` and ``kong_memory_workers_lua_vms_bytes`` (Lua VMs and shared
dicts), the hybrid-mode control-plane metrics (``kong_data_plane_*``) and ``kong_stream_*`` (no stream routes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from isthmus.gateway.kong_metrics import escape, number, parse

SUBSYSTEM = "http"
_GATEWAY_HCM = re.compile(r"^kong_(?:https_)?(?P<port>\d+)$")
HELP = {
    "kong_datastore_reachable": "Datastore reachable from Kong, 0 is unreachable",
    "kong_nginx_connections_total": "Number of connections by subsystem",
    "kong_nginx_metric_errors_total": "Number of nginx-lua-prometheus errors",
    "kong_nginx_requests_total": "Number of requests total",
    "kong_node_info": "Kong Node metadata information",
}
TYPES = {"kong_nginx_metric_errors_total": "counter"}


@dataclass
class _Counts:
    accepted: float = 0.0
    handled: float = 0.0
    requests: float = 0.0
    active: float = 0.0
    in_progress: float = 0.0
    connected: float = 0.0


def _counts(envoy_text: str) -> _Counts:
    counts = _Counts()
    ports: set[str] = set()
    listeners: list[tuple[str, float]] = []
    hcm = {
        "envoy_http_downstream_cx_total": "handled",
        "envoy_http_downstream_rq_total": "requests",
        "envoy_http_downstream_cx_active": "active",
        "envoy_http_downstream_rq_active": "in_progress",
    }
    for name, labels, value in parse(envoy_text):
        tags = dict(labels)
        if name in hcm:
            match = _GATEWAY_HCM.match(tags.get("envoy_http_conn_manager_prefix", ""))
            if match is not None:
                ports.add(match["port"])
                field = hcm[name]
                setattr(counts, field, getattr(counts, field) + value)
        elif name == "envoy_listener_downstream_cx_total" and "envoy_listener_address" in tags:
            listeners.append((tags["envoy_listener_address"], value))
        elif name == "envoy_control_plane_connected_state":
            counts.connected = value
    # a gateway listener's stats are named by its address (``127.0.0.1_8000``, ``[::]_8000``), its HCM's by port
    counts.accepted = sum((v for address, v in listeners if address.rpartition("_")[2] in ports), 0.0)
    return counts


def node_metrics(envoy_text: str, node_id: str, version: str, errors: int = 0) -> str:
    """Envoy's ``/stats/prometheus`` text -> Kong's node-level metrics text."""
    c = _counts(envoy_text)
    node = f'node_id="{escape(node_id)}",subsystem="{SUBSYSTEM}"'
    waiting = max(0.0, c.active - c.in_progress)
    states = [
        ("accepted", c.accepted),
        ("handled", c.handled),
        ("total", c.requests),
        ("active", c.active),
        ("writing", c.in_progress),
        ("waiting", waiting),
    ]
    families: dict[str, list[str]] = {
        "kong_datastore_reachable": [f"kong_datastore_reachable {1 if c.connected >= 1 else 0}"],
        "kong_nginx_connections_total": [
            f'kong_nginx_connections_total{{{node},state="{state}"}} {number(value)}'
            for state, value in states
        ],
        "kong_nginx_metric_errors_total": [f"kong_nginx_metric_errors_total {errors}"],
        "kong_nginx_requests_total": [f"kong_nginx_requests_total{{{node}}} {number(c.requests)}"],
        "kong_node_info": [f'kong_node_info{{node_id="{escape(node_id)}",version="{escape(version)}"}} 1'],
    }
    out: list[str] = []
    for family, samples in families.items():
        out += [f"# HELP {family} {HELP[family]}", f"# TYPE {family} {TYPES.get(family, 'gauge')}", *samples]
    return "\n".join(out) + "\n"
