"""Counting requests in Redis and Kong's answer (the I/O is one Lua script per request; the rest is pure).

For one request the script reads every window's counter and, when none is full, adds the request to all of them
(a new counter gets its window's lifetime) — in one step, so gateways sharing a Redis never let more than the
limit through between them. A rejected request is not counted, as in Kong.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from isthmus.gateway.ratelimit_service.plan import Plan, RedisTarget
from isthmus.gateway.ratelimit_service.windows import (
    EXPIRATION,
    counter_key,
    limit_header,
    remaining_header,
    reset_seconds,
)

log = logging.getLogger(__name__)

UNEXPECTED_ERROR = "An unexpected error occurred"
JSON_TYPE = "application/json; charset=utf-8"

# KEYS: one counter per window; ARGV: the limits, then the lifetimes. Returns the counts before this request and
# 1 when the request was counted (no window full), else 0.
_SCRIPT = """
local n = #KEYS
local counts = {}
local full = false
for i = 1, n do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  counts[i] = c
  if tonumber(ARGV[i]) - c <= 0 then full = true end
end
if not full then
  for i = 1, n do
    if redis.call('INCRBY', KEYS[i], 1) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[n + i]) end
  end
end
counts[n + 1] = full and 0 or 1
return counts
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200  # the status of a refused request
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def kong_body(message: str) -> str:
    return json.dumps({"message": message}, indent=2) + "\n"


def decide(plan: Plan, counts: Sequence[int], now_ms: int) -> Decision:
    """Kong's answer given each window's count before this request (in ``plan.limits`` order)."""
    usage = [
        (window, limit, limit - count) for (window, limit), count in zip(plan.limits, counts, strict=True)
    ]
    stop = next((window for window, _, remaining in usage if remaining <= 0), None)
    headers: list[tuple[str, str]] = []
    reset: int | None = None
    if not plan.hide_client_headers:
        best: tuple[float, int, float] | None = (
            None  # (remaining, window length, limit) of the tightest window
        )
        for window, limit, remaining in usage:
            if stop is None or stop == window:
                remaining -= 1
            remaining = max(0.0, remaining)
            length = EXPIRATION[window]
            if best is None or remaining < best[0] or (remaining == best[0] and length > best[1]):
                best = (remaining, length, limit)
                reset = reset_seconds(window, now_ms)
            headers.append((limit_header(window), _number(limit)))
            headers.append((remaining_header(window), _number(remaining)))
        assert best is not None and reset is not None
        headers += [
            ("RateLimit-Limit", _number(best[2])),
            ("RateLimit-Remaining", _number(best[0])),
            ("RateLimit-Reset", str(reset)),
        ]
    if stop is None:
        return Decision(allowed=True, headers=tuple(headers))
    if reset is not None:
        headers.append(("Retry-After", str(reset)))
    return Decision(False, plan.error_code, tuple(headers), kong_body(plan.error_message))


def unavailable(plan: Plan) -> Decision:
    """Redis could not be asked: the request passes when ``fault_tolerant``, else Kong's 500."""
    if plan.fault_tolerant:
        return Decision(allowed=True)
    return Decision(False, 500, (), kong_body(UNEXPECTED_ERROR))


class Counters:
    """Redis clients by target (a bounded number, least recently used closed first) and the counting script."""

    def __init__(self, max_clients: int = 64) -> None:
        self._clients: OrderedDict[RedisTarget, aioredis.Redis] = OrderedDict()
        self._max = max_clients

    async def _client(self, target: RedisTarget) -> aioredis.Redis:
        client = self._clients.get(target)
        if client is not None:
            self._clients.move_to_end(target)
            return client
        timeout = target.timeout_ms / 1000 if target.timeout_ms > 0 else None
        client = aioredis.Redis(
            host=target.host,
            port=target.port,
            db=target.database,
            username=target.username,
            password=target.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            ssl=target.ssl,
            ssl_cert_reqs="required" if target.ssl_verify else "none",
            ssl_check_hostname=target.ssl_verify,
            retry=Retry(NoBackoff(), 0),  # an answer within redis.timeout, or Kong's failure behaviour
        )
        self._clients[target] = client
        while len(self._clients) > self._max:
            _, old = self._clients.popitem(last=False)
            await old.aclose()
        return client

    async def count(self, plan: Plan, identifier: str, now_ms: int) -> Decision:
        keys = [counter_key(plan.route_id, plan.service_id, identifier, w, now_ms) for w, _ in plan.limits]
        args = [_number(limit) for _, limit in plan.limits] + [str(EXPIRATION[w]) for w, _ in plan.limits]
        try:
            result = await (await self._client(plan.redis)).eval(_SCRIPT, len(keys), *keys, *args)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.warning("rate limiting: Redis %s:%d: %s", plan.redis.host, plan.redis.port, exc)
            return unavailable(plan)
        counts = [int(c) for c in result[: len(keys)]]
        return decide(plan, counts, now_ms)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()
