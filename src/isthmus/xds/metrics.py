"""Prometheus metrics of the xDS server, registered on a registry the caller owns (nothing at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["XdsMetrics"]

_ACK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class XdsMetrics:
    """``xds_nack_total{type_url}``, ``xds_responses_total{type_url}``, ``xds_streams_active`` and
    ``xds_ack_latency_seconds`` (from sending a response to its ACK)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # prometheus_client adds the ``_total`` suffix of counters itself.
        self.nacks = Counter("xds_nack", "NACKs received from proxies", ["type_url"], registry=registry)
        self.responses = Counter("xds_responses", "DiscoveryResponses sent", ["type_url"], registry=registry)
        self.streams_active = Gauge("xds_streams_active", "Open ADS streams", registry=registry)
        self.ack_latency = Histogram(
            "xds_ack_latency_seconds",
            "Time from sending a DiscoveryResponse to its ACK",
            buckets=_ACK_LATENCY_BUCKETS,
            registry=registry,
        )
