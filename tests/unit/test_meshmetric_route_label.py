"""MeshMetric's ``route`` label: the routes of MeshHTTPRoute rules get an Envoy ``stat_prefix`` named after the
rule, an outbound without rules gets none, and the agent turns Envoy's ``envoy_route`` tag into ``route``.

The Envoy text below is what Envoy 1.40's ``/stats/prometheus?usedonly`` printed for a route with
``stat_prefix: my-route_to_0_rules_0`` in the virtual host ``backend`` (three requests, each a 200)."""

from __future__ import annotations

import json

import pytest

from isthmus.dp import metrics as dp_metrics
from isthmus.policies.meshhttproute.plugin import route_stat_prefix
from isthmus.xds.translate.routes import route_configuration
from tests.unit.policy_fixtures import dataplane, outbound, proxy, web_mesh

NODES = (
    web_mesh("backend", "other")
    + dataplane("backend-1", "127.0.0.2", 20002, 8002, "backend")
    + dataplane("other-1", "127.0.0.3", 20003, 8003, "other")
)
MESH = (
    NODES
    + """
---
type: MeshHTTPRoute
mesh: m
name: api.routes
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /api}}, {method: POST}]
      default: {backendRefs: [{kind: MeshService, name: backend}]}
    - matches: [{path: {type: Exact, value: /health}}]
      default: {backendRefs: [{kind: MeshService, name: backend}]}
"""
)

ENVOY_TEXT = """\
# TYPE envoy_vhost_route_upstream_rq counter
envoy_vhost_route_upstream_rq{envoy_response_code="200",envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3
# TYPE envoy_vhost_route_upstream_rq_completed counter
envoy_vhost_route_upstream_rq_completed{envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3
# TYPE envoy_vhost_route_upstream_rq_total counter
envoy_vhost_route_upstream_rq_total{envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3
# TYPE envoy_vhost_route_upstream_rq_xx counter
envoy_vhost_route_upstream_rq_xx{envoy_response_code_class="2",envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3
# TYPE envoy_vhost_route_upstream_rq_time histogram
envoy_vhost_route_upstream_rq_time_bucket{envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0",le="0.5"} 3
envoy_vhost_route_upstream_rq_time_count{envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 3
# TYPE envoy_server_live gauge
envoy_server_live{} 1
"""


def _conf(clusters: dict[str, str] | None = None, **sidecar: object) -> dp_metrics.MetricsConf:
    doc = {
        "labels": {"mesh": "m", "service": "web", "zone": "", "instance": "web-1"},
        "clusters": clusters or {},
        "sidecar": {"profiles": ["Basic"], "include": [], "exclude": [], "includeUnused": False, **sidecar},
        "applications": [],
        "backends": [{"address": "127.0.0.1", "port": 5670, "path": "/metrics"}],
    }
    return dp_metrics.MetricsConf.parse(json.dumps(doc))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-route/to[0]/rules[1]", "my-route_to_0_rules_1"),
        ("api.routes/to[2]/rules[10]", "api_routes_to_2_rules_10"),
        ("a:b..c/to[0]/rules[0]", "a_b_c_to_0_rules_0"),
        ("default", "default"),
        ("[]", "route"),
    ],
)
def test_stat_prefix_of_a_route_name(name: str, expected: str) -> None:
    assert route_stat_prefix(name) == expected


def test_meshhttproute_routes_get_a_stat_prefix_and_default_outbounds_none() -> None:
    ir = proxy(MESH)
    backend = outbound(ir)
    config = route_configuration(backend)
    (vhost,) = config.virtual_hosts
    assert vhost.name == "backend"
    # one Envoy route per match, the matches of one rule sharing its counters; the implicit default rule too
    assert [(r.name, r.stat_prefix) for r in vhost.routes] == [
        ("api.routes/to[0]/rules[1]", "api_routes_to_0_rules_1"),
        ("api.routes/to[0]/rules[0]", "api_routes_to_0_rules_0"),
        ("api.routes/to[0]/rules[0]", "api_routes_to_0_rules_0"),
        ("default", "default"),
    ]
    # no MeshHTTPRoute for "other": its single default route has no per-route stats
    other = outbound(ir, "other")
    (route,) = route_configuration(other).virtual_hosts[0].routes
    assert route.name == "default" and route.stat_prefix == ""
    # nor does any route without a MeshHTTPRoute in the mesh
    bare = proxy(NODES)
    for each in bare.outbounds:
        assert all(not r.stat_prefix for r in route_configuration(each).virtual_hosts[0].routes)


def test_route_label_from_envoys_route_tag() -> None:
    conf = _conf({"backend": "backend"})
    out = dp_metrics.relabel(dp_metrics.filter_families(ENVOY_TEXT, conf), conf.labels, conf.clusters)
    lines = out.splitlines()
    labels = (
        'mesh="m",service="web",instance="web-1",route="my-route_to_0_rules_0",destination_service="backend"'
    )
    assert (
        f'envoy_vhost_route_upstream_rq_total{{{labels},envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"}} 3'
        in lines
    )
    assert (
        f'envoy_vhost_route_upstream_rq{{{labels},envoy_response_code="200",envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"}} 3'
        in lines
    )
    assert (
        f'envoy_vhost_route_upstream_rq_time_bucket{{{labels},envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0",le="0.5"}} 3'
        in lines
    )
    # the Basic profile keeps every per-route family
    for family in ("", "_completed", "_total", "_xx", "_time"):
        assert f"# TYPE envoy_vhost_route_upstream_rq{family} " in out
    # samples that are not per-route get no route label; the cluster's keep destination_service
    assert (
        'envoy_cluster_upstream_rq_total{mesh="m",service="web",instance="web-1",destination_service="backend",envoy_cluster_name="backend"} 3'
        in lines
    )
    assert 'envoy_server_live{mesh="m",service="web",instance="web-1"} 1' in lines
    assert sum('route="' in line for line in lines) == 6


def test_route_label_without_a_known_service_or_other_labels() -> None:
    # a virtual host that is no mesh service the clusters lead to: route only
    out = dp_metrics.relabel(ENVOY_TEXT, (), (("x", "elsewhere"),))
    assert (
        'envoy_vhost_route_upstream_rq_total{route="my-route_to_0_rules_0",envoy_virtual_host="backend",envoy_route="my-route_to_0_rules_0"} 3'
        in out.splitlines()
    )
    # no labels and no clusters at all: the route label still comes
    bare = dp_metrics.relabel(ENVOY_TEXT, ())
    assert 'envoy_vhost_route_upstream_rq_completed{route="my-route_to_0_rules_0",' in bare
    # a sample that already has a route label keeps its own
    own = 'envoy_vhost_route_upstream_rq_total{route="mine",envoy_route="r1"} 1\n'
    assert dp_metrics.relabel(own, ()) == own


def test_route_families_follow_include_and_exclude() -> None:
    conf = _conf(exclude=[{"type": "Prefix", "match": "envoy_vhost_route_"}])
    assert "envoy_vhost_route_" not in dp_metrics.filter_families(ENVOY_TEXT, conf)
    none = _conf(
        profiles=["None"], include=[{"type": "Exact", "match": "envoy_vhost_route_upstream_rq_total"}]
    )
    kept = dp_metrics.filter_families(ENVOY_TEXT, none)
    assert [line.split("{")[0] for line in kept.splitlines() if not line.startswith("#")] == [
        "envoy_vhost_route_upstream_rq_total"
    ]
