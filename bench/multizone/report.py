"""bench.multizone's numbers (pure): wrk's output, medians of rounds, percentiles and the tables."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence

METRICS = ("rps", "p50", "p99", "non2xx")


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50 and p99 in milliseconds and non-2xx answers of ``wrk --latency``'s output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk's output: {out[-300:]!r}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            raise ValueError(f"no {p}% latency in wrk's output")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}  # fmt: skip


def medians(rounds: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per path, the median of each metric over its rounds."""
    return {
        path: {m: statistics.median(r[m] for r in runs) for m in METRICS} for path, runs in rounds.items()
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``th percentile (0 < p <= 100) of ``values``."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def data_path_table(
    med: Mapping[str, Mapping[str, float]], baseline: str, cross: str, direct: str
) -> list[str]:
    """The data-path table (ratios against ``baseline``, the in-zone call) and the verdicts: ``cross`` keeps
    >= 0.8 of the baseline's req/s and adds at most one Envoy hop, estimated as half of what the baseline's two
    Envoys add over ``direct`` (at p50 and p99)."""
    base = med[baseline]
    lines = [f"{'path':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s ratio':>12} {'p99 ratio':>10} {'non-2xx':>8}"]  # fmt: skip
    for name, m in med.items():
        lines.append(
            f"{name:<34} {m['rps']:>9.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['rps'] / base['rps']:>12.3f} "
            f"{m['p99'] / base['p99']:>10.3f} {m['non2xx']:>8.0f}"
        )
    ratio = med[cross]["rps"] / base["rps"]
    lines.append(
        f"cross-zone throughput {ratio:.3f} x in-zone (target >= 0.8): {'met' if ratio >= 0.8 else 'MISSED'}"
    )
    for q in ("p50", "p99"):
        hop = max(0.0, (base[q] - med[direct][q]) / 2)
        extra = med[cross][q] - base[q]
        verdict = "met" if extra <= hop else "MISSED"
        lines.append(f"cross-zone {q} adds {extra:.2f} ms; one Envoy hop ~{hop:.2f} ms (target: at most one hop): {verdict}")  # fmt: skip
    return lines


def propagation_table(samples: Mapping[str, Sequence[float]], target_p99: float = 2.0) -> list[str]:
    """Seconds from a policy applied on the global to a data plane's ACK, per zone and over all zones."""
    lines = [f"{'zone':<10} {'changes':>8} {'p50 s':>8} {'p99 s':>8} {'max s':>8}"]
    everything = [v for vs in samples.values() for v in vs]
    for name, values in [*samples.items(), ("all", everything)]:
        lines.append(
            f"{name:<10} {len(values):>8} {percentile(values, 50):>8.3f} {percentile(values, 99):>8.3f} {max(values):>8.3f}"
        )
    p99 = percentile(everything, 99)
    lines.append(f"policy to ACK p99 {p99:.3f} s over {len(samples)} zones (target < {target_p99:g} s): {'met' if p99 < target_p99 else 'MISSED'}")  # fmt: skip
    return lines
