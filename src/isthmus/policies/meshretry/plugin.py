"""MeshRetry: retries of outbound requests (HTTP routes, gRPC) and connect attempts of TCP outbounds."""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import OutboundListener
from isthmus.ir.traffic import HttpRetry, HttpRoute, Retry
from isthmus.policies.engine import Resolved
from isthmus.policies.meshretry.api import (
    GRPC_RETRY_ON,
    HTTP_METHODS,
    HTTP_RETRY_ON,
    Conf,
    Grpc,
    Http,
    MeshRetrySpec,
)
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms

DEFAULT_HTTP_RETRY_ON = ("gateway-error", "connect-failure", "refused-stream")
DEFAULT_GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "unavailable", "resource-exhausted")


def _ms(value: str | None) -> int | None:
    return None if value is None else duration_ms(value)


def _http(conf: Http) -> HttpRetry:
    conditions: list[str] = []
    codes: list[int] = []
    methods: list[str] = []
    for value in conf.retry_on or []:
        if value in HTTP_RETRY_ON:
            conditions.append(HTTP_RETRY_ON[value])
        elif value in HTTP_METHODS:
            methods.append(HTTP_METHODS[value])
        else:
            codes.append(int(value))
    if codes:
        conditions.append("retriable-status-codes")
    if not conditions:
        conditions = list(DEFAULT_HTTP_RETRY_ON)
    back = conf.back_off
    return HttpRetry(
        num_retries=conf.num_retries,
        per_try_timeout_ms=_ms(conf.per_try_timeout),
        base_interval_ms=_ms(back.base_interval) if back else None,
        max_interval_ms=_ms(back.max_interval) if back else None,
        retry_on=tuple(dict.fromkeys(conditions)),
        retriable_status_codes=tuple(codes),
        retriable_methods=tuple(methods),
    )


def _grpc(conf: Grpc) -> HttpRetry:
    back = conf.back_off
    conditions = tuple(GRPC_RETRY_ON[v] for v in conf.retry_on or []) or DEFAULT_GRPC_RETRY_ON
    return HttpRetry(
        num_retries=conf.num_retries,
        per_try_timeout_ms=_ms(conf.per_try_timeout),
        base_interval_ms=_ms(back.base_interval) if back else None,
        max_interval_ms=_ms(back.max_interval) if back else None,
        retry_on=conditions,
    )


def retry(conf: Conf) -> Retry:
    return Retry(
        http=_http(conf.http) if conf.http else None,
        grpc=_grpc(conf.grpc) if conf.grpc else None,
        tcp_max_connect_attempts=conf.tcp.max_connect_attempt if conf.tcp else None,
    )


class MeshRetryPlugin(ToFromPlugin):
    resource_type = policy_type("MeshRetry", "meshretries", MeshRetrySpec, "mr")
    order = 1400
    conf_model = Conf

    def edit_outbound(self, outbound: OutboundListener, conf: Conf, resolved: Resolved) -> OutboundListener:
        return evolve(outbound, retry=derived(retry, conf))

    def edit_route(
        self, route: HttpRoute, outbound: OutboundListener, conf: Conf, resolved: Resolved
    ) -> HttpRoute:
        """``conf`` is the outbound's configuration with the route's merged on top, field by field (Kuma's
        per-route conf), so a route-level ``http.numRetries`` keeps the outbound's ``perTryTimeout``."""
        return evolve(route, retry=derived(retry, conf))


PLUGIN = MeshRetryPlugin()
