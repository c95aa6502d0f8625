"""What bench.gateway runs and prints, without processes: the Kong configurations (a small workspace, a
10,000-route declarative file), nginx configurations, wrk output parsing and the report tables.

Kept apart from the runner so that tests can check it with tiny inputs (no timing, no processes).
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

API_KEY = "bench-key-0"
# a limit no benchmark reaches: the rate-limiting filter runs on every request and never answers 429
RATE_LIMIT = {"second": 1_000_000, "policy": "local"}

UPSTREAM_CONF = """
worker_processes 1;
daemon off;
pid {dir}/upstream.pid;
error_log {dir}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "hello from the upstream\\n"; }}
  }}
}}
"""

# nginx as a reverse proxy to the same upstream, as many workers as the gateway Envoy has worker threads;
# kept-alive upstream connections (as Envoy's pool) and the forwarding headers Kong's proxy sets
PROXY_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{
    server 127.0.0.1:{upstream};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""


ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def minimal_envoy(port: int, upstream_port: int, admin_port: int) -> dict[str, Any]:
    """A hand-written minimal Envoy bootstrap: one listener, one route to the upstream, the router only, Envoy's
    defaults everywhere else (HTTP/1.1 kept-alive upstream connections). What Envoy itself costs on this machine,
    apart from the gateway's configuration."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    upstream = {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}
    hcm = {
        "@type": HCM,
        "stat_prefix": "minimal",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "minimal",
                    "address": address,
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": upstream}}]}],
                    },
                }
            ],
        },
    }


def route_path(service: int, route: int) -> str:
    """Paths of one length, so that Kong's router order (longer prefixes first) puts the shorter bench paths last."""
    return f"/s{service:05d}/r{route:03d}"


def big_config(
    routes: int, consumers: int, *, per_service: int, upstream: str, key_auth: bool
) -> dict[str, Any]:
    """A decK file: ``routes`` routes on ``routes / per_service`` services, plus the measured routes ``/bench``
    (plain) and ``/bauth`` (rate-limiting, and key-auth when ``key_auth``), both shorter than every other path,
    so the router tries them last; ``consumers`` consumers, each with a key-auth credential."""
    services: list[dict[str, Any]] = []
    made = 0
    index = 0
    while made < routes - 2:
        count = min(per_service, routes - 2 - made)
        services.append(
            {
                "name": f"svc-{index:05d}",
                "url": upstream,
                "routes": [
                    {"name": f"svc-{index:05d}-r{j:03d}", "paths": [route_path(index, j)]}
                    for j in range(count)
                ],
            }
        )
        made += count
        index += 1
    services.append({"name": "bench", "url": upstream, "routes": measured_routes(key_auth)})
    return {
        "_format_version": "3.0",
        "services": services,
        "consumers": [
            {"username": f"user-{i:05d}", "keyauth_credentials": [{"key": f"bench-key-{i}"}]}
            for i in range(consumers)
        ],
    }


def measured_routes(key_auth: bool) -> list[dict[str, Any]]:
    plugins: list[dict[str, Any]] = [{"name": "rate-limiting", "config": dict(RATE_LIMIT)}]
    if key_auth:
        plugins.insert(0, {"name": "key-auth", "config": {}})
    return [
        {"name": "bench-plain", "paths": ["/bench"]},
        {"name": "bench-auth", "paths": ["/bauth"], "plugins": plugins},
    ]


def small_config(upstream: str, key_auth: bool) -> dict[str, Any]:
    """The baseline workspace: the two measured routes and one consumer."""
    return big_config(2, 1, per_service=1, upstream=upstream, key_auth=key_auth)


def dump(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False)


# -- wrk -----------------------------------------------------------------------------------------------------------


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, p50 and p99 (ms) and non-2xx responses from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output: {out!r}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            raise ValueError(f"no {p}% latency in wrk output")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": pct("50"),
        "p99": pct("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


# -- report --------------------------------------------------------------------------------------------------------


def medians(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = [k for k in ("rps", "p50", "p99", "non2xx", "cpu_us") if all(k in r for r in rounds)]
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


def requests_done(out: str) -> int:
    """The number of requests a ``wrk`` run completed."""
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise ValueError("no request count in wrk output")
    return int(m.group(1))


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(p, 0.0) for p in tree)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# (row, its baseline row, target ratio or None) in the order printed
COMPARISONS: tuple[tuple[str, str, float | None], ...] = (
    ("minimal Envoy (router only)", "nginx reverse proxy", None),
    ("gateway, key-auth + rate-limiting", "gateway, plain route", 0.90),
    ("gateway, plain route", "nginx reverse proxy", 0.70),
    ("10k routes, plain route", "gateway, plain route", 0.95),
    ("10k routes + 10k consumers, key-auth + rate-limiting", "gateway, key-auth + rate-limiting", 0.95),
    # before key-auth exists: the rate-limiting route alone
    ("gateway, rate-limiting (no key-auth yet)", "gateway, plain route", 0.90),
    (
        "10k routes + 10k consumers, rate-limiting (no key-auth yet)",
        "gateway, rate-limiting (no key-auth yet)",
        0.95,
    ),
)


# further ratios printed under the table: what the gateway's configuration costs on top of Envoy itself
EXTRA_RATIOS: tuple[tuple[str, str], ...] = (
    ("gateway, plain route", "minimal Envoy (router only)"),
    ("10k routes, plain route", "minimal Envoy (router only)"),
)


def extra_ratio_lines(med: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = []
    for row, base in EXTRA_RATIOS:
        if row in med and base in med and med[base]["rps"]:
            line = f"{row} / {base}: req/s {med[row]['rps'] / med[base]['rps']:.3f}"
            if med[row].get("cpu_us") and med[base].get("cpu_us"):
                line += f", cpu per request {med[base]['cpu_us'] / med[row]['cpu_us']:.3f}"
            lines.append(line)
    return lines


def throughput_table(med: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Rows of the throughput table: each path's medians and its ratio against its baseline (rows in ``med``
    without a comparison get no ratio)."""
    base_of = {row: (base, target) for row, base, target in COMPARISONS}
    width = max([len(k) for k in med] + [4])
    lines = [
        f"{'path':<{width}} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8} {'cpu us/req':>10}  "
        f"{'vs':<{width}} {'ratio':>6} {'target':>7} {'cpu ratio':>9}"
    ]
    for name, m in med.items():
        base, target = base_of.get(name, ("", None))
        ratio_text, target_text, vs, cpu_ratio = "", "", "", ""
        if base in med:
            ratio = m["rps"] / med[base]["rps"]
            ratio_text = f"{ratio:.3f}"
            vs = base
            if target is not None:
                target_text = f">={target:.2f}" + ("" if ratio >= target else " MISSED")
            if m.get("cpu_us") and med[base].get("cpu_us"):
                cpu_ratio = f"{med[base]['cpu_us'] / m['cpu_us']:.3f}"
        cpu = f"{m['cpu_us']:.1f}" if "cpu_us" in m else ""
        lines.append(
            f"{name:<{width}} {m['rps']:>9.0f} {m['p50']:>7.2f} {m['p99']:>7.2f} {m['non2xx']:>8.0f} {cpu:>10}  "
            f"{vs:<{width}} {ratio_text:>6} {target_text:>7} {cpu_ratio:>9}"
        )
    return lines


def timing_lines(
    apply_seconds: Sequence[float], served_seconds: Sequence[float], change_seconds: Sequence[float]
) -> list[str]:
    """The configuration timings: `gateway apply` of the 10,000-route file (< 30 s), until the gateway serves
    it, and a change of one route until it is served (p50/max < 2 s)."""
    lines = []
    if apply_seconds:
        worst = max(apply_seconds)
        lines.append(
            "gateway apply, 10k routes + consumers: "
            + ", ".join(f"{s:.2f}" for s in apply_seconds)
            + f" s (target < 30 s: {'met' if worst < 30 else 'MISSED'})"
        )
    if served_seconds:
        lines.append(
            "  then until the gateway serves it: " + ", ".join(f"{s:.2f}" for s in served_seconds) + " s"
        )
    if change_seconds:
        p50, top = statistics.median(change_seconds), max(change_seconds)
        lines.append(
            f"one route changed among 10k, Admin API return -> first request served: p50 {p50:.3f} s, "
            f"max {top:.3f} s over {len(change_seconds)} changes (target < 2 s: {'met' if top < 2 else 'MISSED'})"
        )
    return lines
