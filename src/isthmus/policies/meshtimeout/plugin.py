"""MeshTimeout: connect, idle, request, stream idle and duration limits per outbound (``to``) and inbound
(``from``). Connect and idle timeouts land on clusters, the rest on listeners and routes."""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, InboundListener, OutboundListener
from isthmus.ir.traffic import HttpRoute, Timeouts
from isthmus.policies.engine import Resolved
from isthmus.policies.meshtimeout.api import Conf, MeshTimeoutSpec
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms


def _ms(value: str | None) -> int | None:
    return None if value is None else duration_ms(value)


def timeouts(conf: Conf) -> Timeouts:
    http = conf.http
    return Timeouts(
        connect_ms=_ms(conf.connection_timeout),
        idle_ms=_ms(conf.idle_timeout),
        request_ms=_ms(http.request_timeout) if http else None,
        stream_idle_ms=_ms(http.stream_idle_timeout) if http else None,
        max_stream_duration_ms=_ms(http.max_stream_duration) if http else None,
        max_connection_duration_ms=_ms(http.max_connection_duration) if http else None,
        request_headers_ms=_ms(http.request_headers_timeout) if http else None,
    )


def _cluster(cluster: Cluster, t: Timeouts) -> Cluster:
    connect = t.connect_ms if t.connect_ms else cluster.connect_timeout_ms
    return evolve(cluster, connect_timeout_ms=connect, timeouts=evolve(t, connect_ms=None, request_ms=None))


class MeshTimeoutPlugin(ToFromPlugin):
    resource_type = policy_type("MeshTimeout", "meshtimeouts", MeshTimeoutSpec, "mt")
    order = 1000
    conf_model = Conf

    def edit_outbound(self, outbound: OutboundListener, conf: Conf, resolved: Resolved) -> OutboundListener:
        return evolve(outbound, timeouts=derived(timeouts, conf))

    def edit_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return _cluster(cluster, derived(timeouts, conf))

    def edit_inbound(self, inbound: InboundListener, conf: Conf, resolved: Resolved) -> InboundListener:
        return evolve(inbound, timeouts=derived(timeouts, conf))

    def edit_local_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return _cluster(cluster, derived(timeouts, conf))

    def edit_route(
        self, route: HttpRoute, outbound: OutboundListener, conf: Conf, resolved: Resolved
    ) -> HttpRoute:
        """``conf`` is the outbound's configuration with the route's on top: Kuma sets a route's timeout and idle
        timeout from it (requestTimeout, streamIdleTimeout; the connection-level fields are refused there)."""
        return evolve(route, timeouts=derived(timeouts, conf))


PLUGIN = MeshTimeoutPlugin()
