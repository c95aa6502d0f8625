"""What the generation loop reports: errors per mesh and per proxy, and its Prometheus metrics.

Metrics (registered on a registry the caller owns, nothing at import time):

* ``isthmus_generation_errors_total{mesh, stage}``: failures, by the stage that failed: ``load`` (a stored record
  that does not validate), ``node_id`` (a stored mesh whose name cannot form node ids), ``mesh_ca``,
  ``mesh_context``, ``certificate``, ``ir``, ``translate`` and ``sync`` (anything else);
* ``isthmus_meshes_in_error``: meshes whose last generation failed (their proxies keep their last good config);
* ``isthmus_proxies_in_error{mesh}``: proxies whose last generation failed (each keeps its last good config);
* ``isthmus_proxies_generated_total``: proxy configurations built;
* ``isthmus_generation_seconds``: time of one mesh's generation pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["STAGES", "GenerationError", "GenerationMetrics"]

STAGES = ("load", "node_id", "mesh_ca", "mesh_context", "certificate", "ir", "translate", "sync")

_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class GenerationError:
    """Why a mesh or a proxy could not be (re)generated; it keeps the last configuration it had."""

    stage: str
    message: str
    time: datetime

    def describe(self) -> str:
        return f"{self.stage}: {self.message}"


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.errors = Counter(
            "isthmus_generation_errors",
            "Failures of the generation loop, by mesh and by the stage that failed",
            ["mesh", "stage"],
            registry=registry,
        )
        self.meshes_in_error = Gauge(
            "isthmus_meshes_in_error",
            "Meshes whose last generation failed (their proxies keep their last good configuration)",
            registry=registry,
        )
        self.proxies_in_error = Gauge(
            "isthmus_proxies_in_error",
            "Proxies whose last generation failed (each keeps its last good configuration)",
            ["mesh"],
            registry=registry,
        )
        self.generated = Counter("isthmus_proxies_generated", "Proxy configurations built", registry=registry)
        self.seconds = Histogram(
            "isthmus_generation_seconds",
            "Time of one mesh's generation pass",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )

    def error(self, mesh: str, stage: str) -> None:
        self.errors.labels(mesh, stage).inc()

    def set_proxies_in_error(self, mesh: str, count: int) -> None:
        self.proxies_in_error.labels(mesh).set(count)

    def forget_mesh(self, mesh: str) -> None:
        """Drop the per-mesh gauge of a deleted mesh (the counters keep their history)."""
        try:
            self.proxies_in_error.remove(mesh)
        except KeyError:
            pass
