"""The web UI's server side: Envoy stats parsing, rates, per-service and per-edge aggregation, which proxy stat
names map to which service, plugin secrets redaction and the static files' path handling. (The scraping itself,
against real Envoys, is in tests/e2e/test_gui.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from isthmus.cp.api.gui import _file
from isthmus.cp.api.ui_data import redact_secrets, traffic_view
from isthmus.cp.stats_scraper import (
    EnvoyStats,
    Sample,
    Target,
    edges,
    parse_stats,
    proxy_traffic,
    services,
    stat_name,
    target_for,
)
from isthmus.ir.model import Cluster, Protocol, ProxyIR

QUANTILES = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]


def envoy_doc(counters: dict[str, int], histograms: dict[str, tuple[float | None, float | None]]) -> Any:
    """The shape of Envoy's ``/stats?format=json``: counters, then one entry with the histograms' quantiles
    (the p99 at index 6 as (interval, cumulative))."""
    computed = []
    for name, (interval, cumulative) in histograms.items():
        values: list[dict[str, float | None]] = [{"interval": None, "cumulative": None} for _ in QUANTILES]
        values[6] = {"interval": interval, "cumulative": cumulative}
        computed.append({"name": name, "values": values})
    return {
        "stats": [
            *({"name": k, "value": v} for k, v in counters.items()),
            {"histograms": {"supported_quantiles": QUANTILES, "computed_quantiles": computed}},
        ]
    }


def test_parse_stats_reads_counters_and_p99() -> None:
    stats = parse_stats(
        envoy_doc(
            {"http.inbound_20001.downstream_rq_total": 7, "cluster.backend.upstream_rq_total": 3},
            {
                "http.inbound_20001.downstream_rq_time": (12.5, 40.0),
                "http.inbound_20002.downstream_rq_time": (None, 8.0),
            },
        )
    )
    assert stats.counters == {
        "http.inbound_20001.downstream_rq_total": 7,
        "cluster.backend.upstream_rq_total": 3,
    }
    # the last interval's p99 when it had samples, else the cumulative one
    assert stats.p99 == {
        "http.inbound_20001.downstream_rq_time": 12.5,
        "http.inbound_20002.downstream_rq_time": 8.0,
    }


@pytest.mark.parametrize("doc", [[], {"stats": {}}, "text", {"nostats": []}])
def test_parse_stats_refuses_other_shapes(doc: Any) -> None:
    with pytest.raises(ValueError, match="stats"):
        parse_stats(doc)


def sidecar_target(clusters: dict[str, str] | None = None) -> Target:
    return Target(
        node_id="default.web-1",
        mesh="default",
        name="web-1",
        url="http://127.0.0.1:9901",
        service="web",
        gateway=False,
        listeners={"inbound_20001": "web"},
        clusters=clusters or {"backend": "backend", "backend-v2": "backend"},
    )


def sample(at: float, counters: dict[str, int], p99: dict[str, float] | None = None) -> Sample:
    return Sample(at, EnvoyStats(counters, p99 or {}))


def test_rates_are_deltas_over_the_interval() -> None:
    target = sidecar_target()
    before = sample(
        100.0,
        {
            "http.inbound_20001.downstream_rq_total": 100,
            "http.inbound_20001.downstream_rq_5xx": 10,
            "cluster.backend.upstream_rq_total": 50,
            "cluster.backend-v2.upstream_rq_total": 0,
        },
    )
    now = sample(
        105.0,
        {
            "http.inbound_20001.downstream_rq_total": 150,
            "http.inbound_20001.downstream_rq_5xx": 15,
            "cluster.backend.upstream_rq_total": 70,
            "cluster.backend.upstream_rq_5xx": 0,
            "cluster.backend-v2.upstream_rq_total": 10,
        },
        {"http.inbound_20001.downstream_rq_time": 42.0},
    )
    traffic = proxy_traffic(target, now, before)
    web = traffic.inbound["web"]
    assert (web.request_rate, web.error_rate, web.requests, web.errors, web.p99_ms) == (
        10.0,
        1.0,
        150,
        15,
        42.0,
    )
    assert traffic_view(web)["errorRate"] == 0.1
    backend = traffic.outbound["backend"]  # both clusters of the service (a route's split) add up
    assert (backend.request_rate, backend.requests) == (6.0, 80)
    # the first sample has no rate yet, only totals
    first = proxy_traffic(target, now, None).inbound["web"]
    assert (first.request_rate, first.requests) == (0.0, 150)


def test_a_restarted_envoy_counts_from_zero() -> None:
    target = sidecar_target()
    before = sample(0.0, {"http.inbound_20001.downstream_rq_total": 1000})
    now = sample(2.0, {"http.inbound_20001.downstream_rq_total": 8})
    assert proxy_traffic(target, now, before).inbound["web"].request_rate == 4.0


def test_services_and_edges_aggregate_instances() -> None:
    counters = {"http.inbound_20001.downstream_rq_total": 10, "cluster.backend.upstream_rq_total": 4}
    one = proxy_traffic(
        sidecar_target(), sample(1.0, counters, {"http.inbound_20001.downstream_rq_time": 5.0}), None
    )
    two = proxy_traffic(
        sidecar_target(), sample(1.0, counters, {"http.inbound_20001.downstream_rq_time": 9.0}), None
    )
    [web] = services([one, two])
    assert (web.service, web.instances, web.traffic.requests, web.traffic.p99_ms) == ("web", 2, 20, 9.0)
    [edge] = edges([one, two])
    assert (edge.source, edge.destination, edge.traffic.requests) == ("web", "backend", 8)


def test_gateway_listeners_count_for_the_gateway_service() -> None:
    target = Target("default.gw-1", "default", "gw-1", "http://127.0.0.1:1", "edge", True, {}, {})
    now = sample(
        1.0, {"http.kong_8080.downstream_rq_total": 5, "http.kong_https_8443.downstream_rq_total": 2}
    )
    assert proxy_traffic(target, now, None).inbound["edge"].requests == 7


def test_target_from_dataplane_and_ir() -> None:
    ir = ProxyIR(
        node_id="default.web-1",
        mesh="default",
        name="web-1",
        inbounds=(),
        outbounds=(),
        clusters=(
            Cluster("backend", Protocol.HTTP, eds=True, service="backend"),
            Cluster("kong:ws:mesh-leg:1", Protocol.HTTP, eds=True, service="orders"),
            Cluster("localhost:8080", Protocol.HTTP, eds=False),  # the local application: no edge
        ),
        endpoints=(),
        secrets=(),
    )
    spec = {
        "networking": {
            "address": "::1",
            "admin": {"port": 9902},
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}],
        }
    }
    target = target_for("default.web-1", spec, ir)
    assert target is not None
    assert target.url == "http://127.0.0.1:9902"  # an address of this host: the admin on loopback
    assert target.service == "web"
    assert target.clusters == {"backend": "backend", "kong_ws_mesh-leg_1": "orders"}
    assert stat_name("a:b:c") == "a_b_c"
    assert target_for("default.web-1", {"networking": {"address": "127.0.0.1"}}, ir) is None  # no admin port
    remote = {"networking": {"address": "2001:db8::7", "admin": {"port": 9901}}}  # TEST-NET: not this host
    assert target_for("default.web-1", remote, ir) == dataclasses.replace(
        target, url="http://[2001:db8::7]:9901", service="web-1", listeners={}
    )


def test_plugin_secrets_are_redacted() -> None:
    plugin = {
        "name": "rate-limiting",
        "config": {"redis": {"password": "s3cret", "host": "r"}, "hide_credentials": True},
    }
    redacted = redact_secrets(plugin)
    assert redacted["config"]["redis"] == {"password": "[redacted]", "host": "r"}
    assert redacted["config"]["hide_credentials"] is True
    assert redact_secrets({"password": None})["password"] is None


def test_static_files_stay_inside_the_build(tmp_path: Path) -> None:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "app.js").write_text("x")
    (tmp_path / "secret.txt").write_text("no")
    assert _file(root, "assets/app.js") == root / "assets" / "app.js"
    assert _file(root, "../secret.txt") is None
    assert _file(root, "assets") is None  # a directory
    assert _file(root, "") is None
    assert _file(root, "a\x00b") is None
