"""MeshRateLimit: a token bucket per inbound (per proxy, not shared across instances): HTTP requests over the
limit get the configured status (429 by default); TCP connections over the limit are closed."""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, Protocol
from isthmus.ir.traffic import LocalRateLimit
from isthmus.policies.engine import Resolved
from isthmus.policies.meshratelimit.api import Conf, MeshRateLimitSpec
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms


def rate_limit(conf: Conf, protocol: Protocol) -> LocalRateLimit | None:
    local = conf.local
    if local is None:
        return None
    out = LocalRateLimit()
    http = local.http
    if protocol is not Protocol.TCP and http and not http.disabled and http.request_rate:
        on = http.on_rate_limit
        headers = []
        if on and on.headers:
            headers = [(h.name, h.value) for h in [*(on.headers.set or []), *(on.headers.add or [])]]
        out = evolve(
            out,
            http_requests=http.request_rate.num,
            http_interval_ms=duration_ms(http.request_rate.interval),
            http_status=(on.status if on and on.status else 429),
            http_response_headers=tuple(headers),
        )
    tcp = local.tcp
    if tcp and not tcp.disabled and tcp.connection_rate:
        out = evolve(
            out,
            tcp_connections=tcp.connection_rate.num,
            tcp_interval_ms=duration_ms(tcp.connection_rate.interval),
        )
    if out.http_requests is None and out.tcp_connections is None:
        return None
    return out


class MeshRateLimitPlugin(ToFromPlugin):
    resource_type = policy_type("MeshRateLimit", "meshratelimits", MeshRateLimitSpec, "mrl")
    order = 900
    conf_model = Conf

    def edit_inbound(self, inbound: InboundListener, conf: Conf, resolved: Resolved) -> InboundListener:
        return evolve(inbound, rate_limit=derived(rate_limit, conf, inbound.protocol))


PLUGIN = MeshRateLimitPlugin()
