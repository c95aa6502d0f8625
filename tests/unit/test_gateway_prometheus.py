"""Kong's node-level metrics and ``kong_upstream_target_health`` from Envoy's admin outputs (captured from a real
Envoy 1.40: ``/stats/prometheus?usedonly`` with the admin API's own HCM beside a gateway HCM, one idle keep-alive
connection and one request whose headers were still arriving; ``/clusters?format=json`` with a failed active health
check, an outlier ejection, a host name resolved by STRICT_DNS and one that never resolved), and the cluster the
control plane sends to tell the gateway agent about its Upstreams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from isthmus.gateway import upstream_health
from isthmus.gateway.entities import default_healthchecks
from isthmus.gateway.kong_node_metrics import node_metrics
from isthmus.gateway.plugins import prometheus
from isthmus.xds import types
from tests.unit.test_gateway_observability import _validate, _workspace
from tests.unit.test_gateway_plugins import _plugin, _xds
from tests.unit.test_gateway_translate import _rid

# /stats/prometheus?usedonly (excerpt: every family the node metrics read, and some they must ignore)
STATS = """\
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="kong_default_service_abc"} 4
envoy_cluster_upstream_rq_total{envoy_cluster_name="kong_default_service_def"} 1
# TYPE envoy_http_downstream_cx_total counter
envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix="admin"} 3
envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix="kong_18080"} 10
# TYPE envoy_http_downstream_rq_total counter
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"} 3
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="kong_18080"} 10
# TYPE envoy_listener_admin_downstream_cx_total counter
envoy_listener_admin_downstream_cx_total{} 3
# TYPE envoy_listener_downstream_cx_total counter
envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_18080"} 10
# TYPE envoy_http_downstream_cx_active gauge
envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="admin"} 1
envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="kong_18080"} 2
# TYPE envoy_http_downstream_rq_active gauge
envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="admin"} 1
envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="kong_18080"} 1
# TYPE envoy_listener_downstream_cx_active gauge
envoy_listener_downstream_cx_active{envoy_listener_address="127.0.0.1_18080"} 2
# TYPE envoy_server_live gauge
envoy_server_live{} 1
"""
# a gateway connected to its control plane (ADS), and a second (TLS) listener
CONNECTED = """\
# TYPE envoy_control_plane_connected_state gauge
envoy_control_plane_connected_state{} 1
envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix="kong_https_18443"} 2
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="kong_https_18443"} 5
envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_18443"} 3
envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_19000"} 7
"""

# /clusters?format=json (each host's ``stats`` removed)
CLUSTERS = """{"cluster_statuses":[{"name":"kong:default:service:abc","host_statuses":[{"address":{"socket_address":{"address":"127.0.0.1","port_value":18081}},"health_status":{"eds_health_status":"HEALTHY"},"weight":1,"hostname":"127.0.0.1","locality":{}},{"address":{"socket_address":{"address":"127.0.0.1","port_value":18099}},"health_status":{"failed_active_health_check":true,"eds_health_status":"HEALTHY"},"weight":1,"hostname":"127.0.0.1","locality":{}},{"address":{"socket_address":{"address":"127.0.0.1","port_value":18081}},"health_status":{"eds_health_status":"HEALTHY"},"weight":1,"hostname":"localhost","locality":{}}],"circuit_breakers":{"thresholds":[{"max_connections":1024,"max_pending_requests":1024,"max_requests":1024,"max_retries":3},{"priority":"HIGH","max_connections":1024,"max_pending_requests":1024,"max_requests":1024,"max_retries":3}]},"observability_name":"kong:default:service:abc"},{"name":"kong:default:service:def","host_statuses":[{"address":{"socket_address":{"address":"127.0.0.1","port_value":18082}},"health_status":{"failed_outlier_check":true,"eds_health_status":"HEALTHY"},"weight":1,"hostname":"127.0.0.1","locality":{}},{"address":{"socket_address":{"address":"::1","port_value":18083}},"health_status":{"failed_outlier_check":true,"eds_health_status":"HEALTHY"},"weight":1,"hostname":"::1","locality":{}}],"circuit_breakers":{"thresholds":[{"max_connections":1024,"max_pending_requests":1024,"max_requests":1024,"max_retries":3},{"priority":"HIGH","max_connections":1024,"max_pending_requests":1024,"max_requests":1024,"max_retries":3}]},"observability_name":"kong:default:service:def"}]}"""  # fmt: skip


def _lines(text: str) -> set[str]:
    return set(text.splitlines())


def test_node_metrics_from_the_gateway_hcms_only() -> None:
    text = node_metrics(STATS, "gw-1", "3.10.0")
    node = 'node_id="gw-1",subsystem="http"'
    expected = {
        f'kong_nginx_connections_total{{{node},state="accepted"}} 10',
        f'kong_nginx_connections_total{{{node},state="handled"}} 10',
        f'kong_nginx_connections_total{{{node},state="total"}} 10',
        f'kong_nginx_connections_total{{{node},state="active"}} 2',
        # the request whose headers were still arriving is in progress; the idle keep-alive connection waits
        f'kong_nginx_connections_total{{{node},state="writing"}} 1',
        f'kong_nginx_connections_total{{{node},state="waiting"}} 1',
        f"kong_nginx_requests_total{{{node}}} 10",
        'kong_node_info{node_id="gw-1",version="3.10.0"} 1',
        "kong_datastore_reachable 0",  # no control plane stream in this capture
        "kong_nginx_metric_errors_total 0",
        "# HELP kong_nginx_connections_total Number of connections by subsystem",
        "# TYPE kong_nginx_connections_total gauge",
        "# TYPE kong_nginx_requests_total gauge",
        "# HELP kong_datastore_reachable Datastore reachable from Kong, 0 is unreachable",
        "# TYPE kong_nginx_metric_errors_total counter",
    }
    assert expected <= _lines(text), text
    assert "reading" not in text and "kong_nginx_timers" not in text


def test_node_metrics_sum_the_gateway_listeners_and_read_the_control_plane_stream() -> None:
    text = node_metrics(STATS + CONNECTED, 'gw "2"', "3.10.0", errors=3)
    node = 'node_id="gw \\"2\\"",subsystem="http"'
    assert {
        "kong_datastore_reachable 1",
        f"kong_nginx_requests_total{{{node}}} 15",
        # the listener on 19000 has no gateway HCM (not the gateway's): not counted
        f'kong_nginx_connections_total{{{node},state="accepted"}} 13',
        f'kong_nginx_connections_total{{{node},state="handled"}} 12',
        "kong_nginx_metric_errors_total 3",
    } <= _lines(text), text
    # every sample line parses as Prometheus text: name{labels} value
    for line in text.splitlines():
        assert line.startswith("#") or line.rsplit(" ", 1)[1].isdigit(), line


def test_an_idle_gateway_has_zero_counts() -> None:
    text = node_metrics("", "gw", "3.10.0")
    assert 'kong_nginx_requests_total{node_id="gw",subsystem="http"} 0' in text
    assert 'kong_nginx_connections_total{node_id="gw",subsystem="http",state="waiting"} 0' in text


# -- kong_upstream_target_health ---------------------------------------------------------------------------------

ACTIVE = {**default_healthchecks(), "active": {**default_healthchecks()["active"], "healthy": {"interval": 1, "successes": 1, "http_statuses": [200]}}}  # fmt: skip
PASSIVE = {**default_healthchecks(), "passive": {**default_healthchecks()["passive"], "unhealthy": {"http_failures": 1, "tcp_failures": 1, "timeouts": 0, "http_statuses": [500]}}}  # fmt: skip


def _entities(*plugins: dict[str, Any]) -> dict[str, Any]:
    entities = _workspace(*plugins)
    services = entities["services"]
    sid = next(iter(services))
    services[sid]["host"] = "up"
    services["def"] = {"id": "def", "host": "err", "port": 80, "protocol": "http"}
    services["mesh"] = {"id": "mesh", "host": "up.mesh", "port": 80, "protocol": "http"}
    entities["upstreams"] = {
        "u1": {"id": "u1", "name": "up", "healthchecks": ACTIVE},
        "u2": {"id": "u2", "name": "err", "healthchecks": PASSIVE},
        "u3": {"id": "u3", "name": "off", "healthchecks": default_healthchecks()},
    }
    targets = [
        ("u1", "127.0.0.1:18081", 100), ("u1", "127.0.0.1:18099", 100), ("u1", "localhost:18081", 100),
        ("u1", "nonexistent.invalid:18081", 100), ("u1", "127.0.0.1:18098", 0),
        ("u2", "127.0.0.1:18082", 100), ("u2", "[::1]:18083", 100),
        ("u3", "10.0.0.1:80", 100), ("u3", "name.example:80", 100),
    ]  # fmt: skip
    entities["targets"] = {
        f"t{i}": {"id": f"t{i}", "upstream": {"id": u}, "target": t, "weight": w}
        for i, (u, t, w) in enumerate(targets)
    }
    return entities


def _marker(entities: dict[str, Any]) -> dict[str, Any]:
    found = upstream_health.marker_cluster("default", entities)
    assert found is not None
    return found


def test_the_marker_cluster_only_when_a_prometheus_plugin_asks() -> None:
    on = _plugin(_rid(10), "prometheus", {"upstream_health_metrics": True}, route=_rid(1))
    off = _plugin(_rid(11), "prometheus", {"status_code_metrics": True})
    assert upstream_health.marker_cluster("default", _entities(off)) is None
    assert upstream_health.marker_cluster("default", _entities(off, {**on, "enabled": False})) is None
    cluster = _marker(_entities(off, on))  # any enabled configuration, at any scope
    assert cluster["name"] == "kong:default:upstream-health" and "load_assignment" not in cluster
    listed = cluster["metadata"]["filter_metadata"][upstream_health.METADATA]["upstreams"]
    by_name = {u["name"]: u for u in listed}
    sid = next(s for s in _entities()["services"] if s not in ("def", "mesh"))
    assert by_name["up"] == {
        "name": "up",
        "healthchecks": True,
        "clusters": [f"kong:default:service:{sid}"],  # the mesh service's host is not the upstream
        "targets": ["127.0.0.1:18081", "127.0.0.1:18099", "localhost:18081", "nonexistent.invalid:18081"],
    }
    assert by_name["err"]["healthchecks"] and not by_name["off"]["healthchecks"]
    assert by_name["off"]["clusters"] == []
    json_format.ParseDict(cluster, cluster_pb2.Cluster())


def test_the_marker_cluster_reaches_the_gateway_and_envoy_accepts_it(tmp_path: Path) -> None:
    on = _plugin(_rid(10), "prometheus", {"upstream_health_metrics": True})
    xds = _xds(_entities(on))
    names = [c["name"] for c in xds[types.CLUSTER]]
    assert "kong:default:upstream-health" in names
    _validate(xds, tmp_path)
    assert "kong:default:upstream-health" not in [c["name"] for c in _xds(_entities())[types.CLUSTER]]


def _dump(cluster: dict[str, Any]) -> str:
    """Envoy's ``/config_dump?resource=dynamic_active_clusters`` answer holding ``cluster``."""
    entry = {
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster",
        "version_info": "7",
        "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", **cluster},
        "last_updated": "2026-11-30T16:36:22.309Z",
    }
    return json.dumps({"configs": [entry]})


def _clusters_renamed(sid: str) -> str:
    return CLUSTERS.replace("kong:default:service:abc", f"kong:default:service:{sid}")


def test_target_states_from_envoys_host_flags() -> None:
    entities = _entities(_plugin(_rid(10), "prometheus", {"upstream_health_metrics": True}))
    sid = next(s for s in entities["services"] if s not in ("def", "mesh"))
    marked = upstream_health.upstreams(_dump(_marker(entities)))
    assert marked is not None
    found = upstream_health.samples(marked, _clusters_renamed(sid))
    assert [tuple(s) for s in found] == [
        ("err", "127.0.0.1:18082", "127.0.0.1:18082", "unhealthy"),  # ejected by outlier detection (passive)
        ("err", "[::1]:18083", "[::1]:18083", "unhealthy"),
        ("off", "10.0.0.1:80", "10.0.0.1:80", "healthchecks_off"),  # no Service uses it: IP targets only
        ("up", "127.0.0.1:18081", "127.0.0.1:18081", "healthy"),
        ("up", "127.0.0.1:18099", "127.0.0.1:18099", "unhealthy"),  # failed its active check
        ("up", "localhost:18081", "127.0.0.1:18081", "healthy"),  # resolved by DNS
        ("up", "nonexistent.invalid:18081", "", "dns_error"),  # never resolved
    ]


def test_health_checks_off_and_upstreams_shared_by_services() -> None:
    marked = [
        {"name": "plain", "healthchecks": False, "clusters": ["kong:w:service:a"], "targets": ["127.0.0.1:18081"]},
        {"name": "shared", "healthchecks": True, "clusters": ["kong:w:service:a", "kong:w:service:b"],
         "targets": ["127.0.0.1:18081"]},
    ]  # fmt: skip

    def host(status: dict[str, Any]) -> dict[str, Any]:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": 18081}}
        return {"address": address, "hostname": "127.0.0.1", "health_status": status}

    clusters = {
        "cluster_statuses": [
            {"name": "kong:w:service:a", "host_statuses": [host({"eds_health_status": "HEALTHY"})]},
            {"name": "kong:w:service:b", "host_statuses": [host({"failed_active_health_check": True})]},
        ]
    }
    found = upstream_health.samples(marked, json.dumps(clusters))
    assert [s.state for s in found] == ["healthchecks_off", "unhealthy"]


def test_no_marker_means_the_metric_is_off() -> None:
    assert upstream_health.upstreams('{"configs":[]}') is None
    assert upstream_health.upstreams("{}") is None


def test_render_as_kong_one_sample_per_state() -> None:
    text = upstream_health.render(
        [upstream_health.Sample("up", "localhost:18081", "127.0.0.1:18081", "unhealthy")]
    )
    labels = 'upstream="up",target="localhost:18081",address="127.0.0.1:18081"'
    assert text.splitlines() == [
        "# HELP kong_upstream_target_health Health status of targets of upstream. "
        "States = healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.",
        "# TYPE kong_upstream_target_health gauge",
        f'kong_upstream_target_health{{{labels},state="healthchecks_off",subsystem="http"}} 0',
        f'kong_upstream_target_health{{{labels},state="healthy",subsystem="http"}} 0',
        f'kong_upstream_target_health{{{labels},state="unhealthy",subsystem="http"}} 1',
        f'kong_upstream_target_health{{{labels},state="dns_error",subsystem="http"}} 0',
    ]
    assert upstream_health.render([]) == ""


def test_upstream_health_metrics_is_accepted_ai_metrics_refused() -> None:
    assert prometheus.checks(prometheus.Config(upstream_health_metrics=True)) == {}
    assert prometheus.checks(prometheus.Config(ai_metrics=True)) == {
        "ai_metrics": "ai_metrics is not supported yet"
    }
