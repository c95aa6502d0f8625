"""bench.gateway imports, and its configurations, wrk parsing and tables work on tiny inputs (no timing)."""

from __future__ import annotations

import importlib

from bench.gateway import workload

from isthmus.gateway.declarative import desired, load
from isthmus.gateway.store import Workspace

WRK = """Running 2s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Latency Distribution
     50%  310.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.50s
  100 requests in 2.00s, 10.00KB read
  Non-2xx or 3xx responses: 3
Requests/sec:  12345.67
"""


def test_the_runner_imports() -> None:
    module = importlib.import_module("bench.gateway.__main__")
    assert callable(module.main)


def test_big_config_is_a_valid_declarative_file() -> None:
    doc = workload.big_config(7, 3, per_service=2, upstream="http://127.0.0.1:9", key_auth=True)
    routes = [r for s in doc["services"] for r in s["routes"]]
    assert len(routes) == 7 and len(doc["consumers"]) == 3
    assert {r["paths"][0] for r in routes} >= {"/bench", "/bauth"}
    # every generated path has the same length, longer than the measured ones (tried last)
    assert {len(r["paths"][0]) for r in routes if r["name"].startswith("svc-")} == {len("/s00000/r000")}
    want = desired(Workspace("bench"), load(workload.dump(doc)))
    assert len(want["routes"]) == 7 and len(want["key-auths"]) == 3
    small = workload.small_config("http://127.0.0.1:9", key_auth=False)
    names = [p["name"] for s in small["services"] for r in s["routes"] for p in r.get("plugins", [])]
    assert names == ["rate-limiting"]


def test_wrk_output_and_tables() -> None:
    parsed = workload.parse_wrk(WRK)
    assert parsed == {"rps": 12345.67, "p50": 0.31, "p99": 1500.0, "non2xx": 3.0}
    rounds = {
        "nginx reverse proxy": [{**parsed, "rps": 100.0}, {**parsed, "rps": 300.0}, {**parsed, "rps": 200.0}],
        "gateway, plain route": [{**parsed, "rps": 80.0}],
        "gateway, key-auth + rate-limiting": [{**parsed, "rps": 60.0}],
    }
    med = {k: workload.medians(v) for k, v in rounds.items()}
    assert med["nginx reverse proxy"]["rps"] == 200.0
    lines = workload.throughput_table(med)
    assert len(lines) == 4
    assert "0.400" in lines[2] and "MISSED" in lines[2]  # 80 / 200 against >= 0.70
    assert "0.750" in lines[3] and "MISSED" in lines[3]  # 60 / 80 against >= 0.90
    timings = workload.timing_lines([12.0], [0.5], [0.2, 0.4, 2.5])
    assert "met" in timings[0] and "p50 0.400 s, max 2.500 s" in timings[2] and "MISSED" in timings[2]
    assert workload.percentile([3.0, 1.0, 2.0], 50) == 2.0 and workload.percentile([1.0, 2.0], 100) == 2.0
