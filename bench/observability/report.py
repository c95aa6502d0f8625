"""bench.observability's numbers (pure): medians of rounds, the table and the verdict."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from bench.multizone.report import parse_wrk

__all__ = ["BARE", "OBSERVED", "TARGET", "medians", "parse_wrk", "table"]

BARE = "bare mesh path"
OBSERVED = "metrics + access log + 10% traces"
TARGET = 0.90


def medians(rounds: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per path, the median of each figure over the rounds that have it (``cpu_us`` may be missing)."""
    out: dict[str, dict[str, float]] = {}
    for path, runs in rounds.items():
        keys = sorted({k for run in runs for k in run})
        out[path] = {k: statistics.median(run[k] for run in runs if k in run) for k in keys}
    return out


def table(med: Mapping[str, Mapping[str, float]], evidence: Mapping[str, float] | None = None) -> list[str]:
    """The paths' medians with ratios against the bare path, the verdict, and what the observed path produced
    (``evidence``: access-log lines, span batches, scrapes), which shows the policies were in force. ``cpu_us``
    is the two sidecars' CPU time per request."""
    base = med[BARE]
    lines = [f"{'path':<36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs bare':>14} {'p99 vs bare':>12} {'Envoy CPU us/req':>17} {'non-2xx':>8}"]  # fmt: skip
    for name, m in med.items():
        cpu = f"{m['cpu_us']:.1f}" if "cpu_us" in m else "-"
        lines.append(
            f"{name:<36} {m['rps']:>9.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['rps'] / base['rps']:>14.3f} "
            f"{m['p99'] / base['p99']:>12.3f} {cpu:>17} {m['non2xx']:>8.0f}"
        )
    ratio = med[OBSERVED]["rps"] / base["rps"]
    lines.append(
        f"observed path {ratio:.3f} x the bare path's req/s (target >= {TARGET:.2f}): "
        f"{'met' if ratio >= TARGET else 'MISSED'}"
    )
    if "cpu_us" in med[OBSERVED] and "cpu_us" in base:
        cpu_ratio = base["cpu_us"] / med[OBSERVED]["cpu_us"]
        lines.append(
            f"by the sidecars' CPU per request: {cpu_ratio:.3f} x the bare path's requests per CPU second"
        )
    for key, value in (evidence or {}).items():
        lines.append(f"  {key}: {value:.0f}")
    return lines
