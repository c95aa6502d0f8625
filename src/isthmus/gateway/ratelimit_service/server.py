"""The rate-limit service on Envoy's gRPC API (``envoy.service.ratelimit.v3.RateLimitService``), grpc.aio.

The gateway agent runs it on loopback next to its Envoy (:func:`serving`), and the gateway's bootstrap names it
as the static cluster :data:`CLUSTER` (:func:`cluster`), which the ``envoy.filters.http.ratelimit`` filter calls.
Each request's descriptor carries the route's plan (:mod:`.plan`); the answer is Kong's: ``OK`` with the limit
headers, or ``OVER_LIMIT`` with Kong's body, its headers and, for a status other than 429, the header
:data:`STATUS_HEADER` that the gateway's Lua filter turns into the response status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from isthmus.gateway.ratelimit_service.counting import JSON_TYPE, Counters, Decision
from isthmus.gateway.ratelimit_service.plan import PLAN_KEY, Plan, identifier

log = logging.getLogger(__name__)

CLUSTER = "isthmus_ratelimit"
STATUS_HEADER = "x-isthmus-ratelimit-status"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_Code = rls_pb2.RateLimitResponse.Code


def _header(key: str, value: str) -> base_pb2.HeaderValue:
    return base_pb2.HeaderValue(key=key, value=value)


def response(decision: Decision) -> rls_pb2.RateLimitResponse:
    """Envoy's answer for Kong's decision."""
    out = rls_pb2.RateLimitResponse(overall_code=_Code.OK if decision.allowed else _Code.OVER_LIMIT)
    out.response_headers_to_add.extend(_header(k, v) for k, v in decision.headers)
    if not decision.allowed:
        out.response_headers_to_add.append(_header("content-type", JSON_TYPE))
        if decision.status != 429:
            out.response_headers_to_add.append(_header(STATUS_HEADER, str(decision.status)))
        out.raw_body = decision.body.encode()
    return out


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """``ShouldRateLimit``: the first descriptor with a plan decides (a route has one rate-limiting config)."""

    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time) -> None:
        self._counters = counters
        self._clock = clock
        self._plans: OrderedDict[str, Plan] = OrderedDict()

    def _plan(self, text: str) -> Plan:
        plan = self._plans.get(text)
        if plan is None:
            plan = Plan.decode(text)
            self._plans[text] = plan
            if len(self._plans) > 4096:
                self._plans.popitem(last=False)
        return plan

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        for descriptor in request.descriptors:
            entries = {e.key: e.value for e in descriptor.entries}
            text = entries.get(PLAN_KEY)
            if text is None:
                continue
            try:
                plan = self._plan(text)
            except ValueError as exc:
                log.warning("rate limiting: %s", exc)
                continue
            now_ms = int(self._clock() * 1000)
            decision = await self._counters.count(plan, identifier(plan, entries), now_ms)
            return response(decision)
        return rls_pb2.RateLimitResponse(overall_code=_Code.OK)


@dataclass(frozen=True)
class Running:
    host: str
    port: int
    server: grpc.aio.Server
    stopped: asyncio.Event

    async def wait(self) -> None:
        """Until the service stops (only when :func:`serving` ends). Safe to cancel, unlike grpc's own
        ``wait_for_termination``, whose cancellation breaks the server's later shutdown."""
        await self.stopped.wait()


@contextlib.asynccontextmanager
async def serving(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Running]:
    """The service listening on ``host:port`` (0: a free port) for the life of the context."""
    counters = Counters()
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(counters), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"rate-limit service: cannot listen on {host}:{port}")
    await server.start()
    log.debug("rate-limit service on %s:%d", host, bound)
    running = Running(host, bound, server, asyncio.Event())
    try:
        yield running
    finally:
        running.stopped.set()
        # shielded so that a cancelled agent still closes its listener and Redis connections
        await asyncio.shield(_stop(server, counters))


async def _stop(server: grpc.aio.Server, counters: Counters) -> None:
    await server.stop(grace=1.0)
    await counters.close()


def cluster(host: str, port: int) -> dict[str, Any]:
    """The gateway bootstrap's static cluster for the service (HTTP/2, loopback)."""
    return {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
