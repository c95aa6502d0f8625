"""bench.multizone imports, and its wrk parsing, medians, percentiles and tables work on tiny inputs (no timing)."""

from __future__ import annotations

import importlib

import pytest
from bench.multizone.report import data_path_table, medians, parse_wrk, percentile, propagation_table

WRK = """Running 2s test @ http://127.0.0.1:15002/
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
    module = importlib.import_module("bench.multizone.__main__")
    assert callable(module.main)
    assert "a-bench-propagation" in module.timeout_policy(7) and "7s" in module.timeout_policy(7)


def test_wrk_output_in_milliseconds() -> None:
    assert parse_wrk(WRK) == {"rps": 12345.67, "p50": 0.31, "p99": 1500.0, "non2xx": 3.0}
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("connection refused")


def test_medians_and_percentiles() -> None:
    runs = [{"rps": r, "p50": 1.0, "p99": 2.0 * r, "non2xx": 0.0} for r in (1.0, 3.0, 2.0)]
    assert medians({"a": runs}) == {"a": {"rps": 2.0, "p50": 1.0, "p99": 4.0, "non2xx": 0.0}}
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_data_path_table_ratios_and_verdicts() -> None:
    med = {
        "direct": {"rps": 10000.0, "p50": 1.0, "p99": 2.0, "non2xx": 0.0},
        "in-zone": {"rps": 4000.0, "p50": 3.0, "p99": 6.0, "non2xx": 0.0},
        "cross-zone": {"rps": 3000.0, "p50": 4.5, "p99": 9.0, "non2xx": 0.0},
    }
    lines = data_path_table(med, "in-zone", "cross-zone", "direct")
    assert lines[0].split()[:3] == ["path", "req/s", "p50"]
    cross = next(line for line in lines if line.startswith("cross-zone "))
    assert "0.750" in cross and "1.500" in cross  # req/s and p99 against in-zone
    assert any("0.750 x in-zone" in line and "MISSED" in line for line in lines)
    # one hop = half of (in-zone - direct): p50 1.0 ms (adds 1.5: missed), p99 2.0 ms (adds 3.0: missed)
    assert any(line.startswith("cross-zone p50 adds 1.50 ms; one Envoy hop ~1.00 ms") for line in lines)
    med["cross-zone"] = {"rps": 3900.0, "p50": 3.5, "p99": 7.0, "non2xx": 0.0}
    assert all(line.endswith("met") for line in data_path_table(med, "in-zone", "cross-zone", "direct")[4:])


def test_propagation_table() -> None:
    lines = propagation_table({"z1": [0.1, 0.3], "z2": [0.2], "z3": [2.5]})
    assert [line.split()[0] for line in lines[1:5]] == ["z1", "z2", "z3", "all"]
    assert lines[4].split()[1] == "4"
    assert lines[-1].startswith("policy to ACK p99 2.500 s over 3 zones") and lines[-1].endswith("MISSED")
    assert propagation_table({"z1": [0.5]})[-1].endswith("met")
