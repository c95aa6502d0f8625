"""The rate-limit service of rate-limiting ``policy: redis``: Kong's windows, keys, identifiers, headers and
answers, counted in a real redis-server, and the gRPC API Envoy calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from isthmus.gateway.ratelimit_service.counting import Counters, decide
from isthmus.gateway.ratelimit_service.plan import Plan, RedisTarget, identifier
from isthmus.gateway.ratelimit_service.server import STATUS_HEADER, serving
from isthmus.gateway.ratelimit_service.windows import counter_key, reset_seconds, window_start
from tests.conftest import free_port
from tests.redis_server import RedisServer

ROUTE = "1b7c6c6e-7a3e-4bb2-9a0e-2f5c1e0d4a11"


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = _ms("2026-03-17T13:45:27.250")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def target(redis_server: RedisServer) -> RedisTarget:
    client = redis_server.client()
    client.flushall()
    client.close()
    return RedisTarget(host="127.0.0.1", port=redis_server.port, timeout_ms=2000)


@pytest.fixture
async def counters() -> AsyncIterator[Counters]:
    found = Counters()
    try:
        yield found
    finally:
        await found.close()


# -- windows ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "start", "reset"),
    [
        ("second", "2026-03-17T13:45:27", 1),
        ("minute", "2026-03-17T13:45:00", 60 - 27),
        ("hour", "2026-03-17T13:00:00", 3600 - 45 * 60 - 27),
        ("day", "2026-03-17T00:00:00", 86400 - 13 * 3600 - 45 * 60 - 27),
        # a month and a year have Kong's fixed lengths (30 and 365 days) from the calendar start
        ("month", "2026-03-01T00:00:00", 2592000 - (16 * 86400 + 13 * 3600 + 45 * 60 + 27)),
        ("year", "2026-01-01T00:00:00", 31536000 - ((31 + 28 + 16) * 86400 + 13 * 3600 + 45 * 60 + 27)),
    ],
)
def test_calendar_windows(window: str, start: str, reset: int) -> None:
    assert window_start(window, NOW) == _ms(start)
    assert reset_seconds(window, NOW) == reset


def test_reset_is_at_least_one_second() -> None:
    assert reset_seconds("minute", _ms("2026-03-17T13:45:59.999")) == 1


def test_kong_counter_key() -> None:
    assert counter_key(ROUTE, None, "10.0.0.1", "minute", NOW) == (
        f"ratelimit:{ROUTE}:00000000-0000-0000-0000-000000000000:10.0.0.1:{_ms('2026-03-17T13:45:00')}:minute"
    )


# -- identifiers --------------------------------------------------------------------------------------------------


def _plan(target: RedisTarget | None = None, **fields: Any) -> Plan:
    base: dict[str, object] = {"limits": (("minute", 3.0),), "redis": target or RedisTarget(host="h")}
    return Plan(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "entries", "expected"),
    [
        (
            {"limit_by": "consumer"},
            {"consumer": "c1", "credential": "k1", "remote_address": "10.0.0.1"},
            "c1",
        ),
        ({"limit_by": "consumer"}, {"credential": "k1", "remote_address": "10.0.0.1"}, "k1"),
        ({"limit_by": "consumer"}, {"remote_address": "10.0.0.1"}, "10.0.0.1"),
        ({"limit_by": "credential"}, {"consumer": "c1", "remote_address": "10.0.0.1"}, "10.0.0.1"),
        ({"limit_by": "credential"}, {"credential": "k1", "remote_address": "10.0.0.1"}, "k1"),
        ({"limit_by": "ip"}, {"consumer": "c1", "remote_address": "10.0.0.1"}, "10.0.0.1"),
        ({"limit_by": "service", "request_service_id": "s1"}, {"remote_address": "10.0.0.1"}, "s1"),
        (
            {"limit_by": "header", "header_name": "x-team"},
            {"header": "blue", "remote_address": "10.0.0.1"},
            "blue",
        ),
        ({"limit_by": "header", "header_name": "x-team"}, {"remote_address": "10.0.0.1"}, "10.0.0.1"),
        ({"limit_by": "path", "path": "/a"}, {"path": "/a?x=1", "remote_address": "10.0.0.1"}, "/a"),
        ({"limit_by": "path", "path": "/a"}, {"path": "/b", "remote_address": "10.0.0.1"}, "10.0.0.1"),
    ],
)
def test_identifier(fields: dict[str, Any], entries: dict[str, str], expected: str) -> None:
    assert identifier(_plan(**fields), entries) == expected


def test_plan_round_trip() -> None:
    plan = _plan(limit_by="header", header_name="x-team", route_id=ROUTE, error_code=503, error_message="no")
    assert Plan.decode(plan.encode()) == plan
    with pytest.raises(ValueError, match="not a rate-limiting plan"):
        Plan.decode('{"limits": []}')


# -- Kong's answer (pure) -----------------------------------------------------------------------------------------


def test_headers_name_every_window_and_the_tightest() -> None:
    plan = _plan(limits=(("second", 5.0), ("minute", 10.0), ("hour", 100.0)))
    decision = decide(plan, [0, 8, 10], NOW)
    headers = dict(decision.headers)
    assert decision.allowed
    assert headers == {
        "X-RateLimit-Limit-Second": "5", "X-RateLimit-Remaining-Second": "4",
        "X-RateLimit-Limit-Minute": "10", "X-RateLimit-Remaining-Minute": "1",
        "X-RateLimit-Limit-Hour": "100", "X-RateLimit-Remaining-Hour": "89",
        "RateLimit-Limit": "10", "RateLimit-Remaining": "1", "RateLimit-Reset": str(60 - 27),
    }  # fmt: skip


def test_a_tie_names_the_longer_window() -> None:
    decision = decide(_plan(limits=(("minute", 2.0), ("hour", 2.0))), [0, 0], NOW)
    headers = dict(decision.headers)
    assert headers["RateLimit-Remaining"] == "1" and headers["RateLimit-Reset"] == str(3600 - 45 * 60 - 27)


def test_refusal_is_kongs() -> None:
    plan = _plan(limits=(("second", 5.0), ("minute", 10.0)))
    decision = decide(plan, [2, 10], NOW)
    headers = dict(decision.headers)
    assert not decision.allowed and decision.status == 429
    assert json.loads(decision.body) == {"message": "API rate limit exceeded"}
    # the full window shows 0 and names Retry-After; the other one is not charged for the refused request
    assert headers["X-RateLimit-Remaining-Minute"] == "0" and headers["X-RateLimit-Remaining-Second"] == "3"
    assert headers["Retry-After"] == headers["RateLimit-Reset"] == str(60 - 27)


def test_hidden_headers_and_custom_answer() -> None:
    decision = decide(_plan(hide_client_headers=True, error_code=503, error_message="slow down"), [3], NOW)
    assert (decision.allowed, decision.status, decision.headers) == (False, 503, ())
    assert json.loads(decision.body) == {"message": "slow down"}
    assert decide(_plan(hide_client_headers=True), [0], NOW).headers == ()


# -- counting in Redis --------------------------------------------------------------------------------------------


async def test_counts_in_redis_with_kongs_keys(
    counters: Counters, target: RedisTarget, redis_server: RedisServer
) -> None:
    plan = _plan(target, limits=(("minute", 3.0), ("hour", 5.0)), route_id=ROUTE)
    answers = [await counters.count(plan, "10.0.0.1", NOW) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [dict(a.headers)["X-RateLimit-Remaining-Minute"] for a in answers] == ["2", "1", "0", "0"]
    assert dict(answers[3].headers)["X-RateLimit-Remaining-Hour"] == "2"
    # another client has its own count; the next minute starts again (the hour remembers)
    assert (await counters.count(plan, "10.0.0.2", NOW)).allowed
    later = await counters.count(plan, "10.0.0.1", NOW + 60_000)
    assert later.allowed and dict(later.headers)["X-RateLimit-Remaining-Hour"] == "1"
    client = redis_server.client()
    minute_key = counter_key(ROUTE, None, "10.0.0.1", "minute", NOW)
    assert client.get(minute_key) == "3"  # the refused request is not counted
    assert 0 < int(client.ttl(minute_key)) <= 60
    assert 3540 < int(client.ttl(counter_key(ROUTE, None, "10.0.0.1", "hour", NOW))) <= 3600
    client.close()


async def test_database_and_password(tmp_path: Path, counters: Counters) -> None:
    server = RedisServer(tmp_path, password="s3cret").start()
    try:
        good = RedisTarget(host="127.0.0.1", port=server.port, password="s3cret", database=2)
        plan = _plan(good, fault_tolerant=False)
        assert (await counters.count(plan, "a", NOW)).allowed
        client = redis.Redis(
            host="127.0.0.1", port=server.port, password="s3cret", db=2, decode_responses=True
        )
        assert client.get(counter_key(None, None, "a", "minute", NOW)) == "1"
        client.close()
        wrong = _plan(RedisTarget(host="127.0.0.1", port=server.port, password="nope"), fault_tolerant=False)
        assert (await counters.count(wrong, "a", NOW)).status == 500
    finally:
        server.stop()


async def test_redis_down(counters: Counters) -> None:
    nowhere = RedisTarget(host="127.0.0.1", port=free_port(), timeout_ms=500)
    assert (await counters.count(_plan(nowhere), "a", NOW)).allowed  # fault_tolerant: passes
    failed = await counters.count(_plan(nowhere, fault_tolerant=False), "a", NOW)
    assert (failed.allowed, failed.status, failed.headers) == (False, 500, ())
    assert json.loads(failed.body) == {"message": "An unexpected error occurred"}


# -- the gRPC API -------------------------------------------------------------------------------------------------


def _request(plan: Plan, **entries: str) -> rls_pb2.RateLimitRequest:
    descriptor = ratelimit_pb2.RateLimitDescriptor()
    descriptor.entries.add(key="kong_rl", value=plan.encode())
    for key, value in entries.items():
        descriptor.entries.add(key=key, value=value)
    return rls_pb2.RateLimitRequest(domain="kong", descriptors=[descriptor], hits_addend=1)


async def test_should_rate_limit_over_grpc(target: RedisTarget) -> None:
    plan = _plan(target, limits=(("minute", 1.0),), error_code=503, error_message="later")
    async with serving("127.0.0.1", 0) as service:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            ok = await stub.ShouldRateLimit(_request(plan, remote_address="10.0.0.9"))
            over = await stub.ShouldRateLimit(_request(plan, remote_address="10.0.0.9"))
            other = await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="kong"))
    assert ok.overall_code == rls_pb2.RateLimitResponse.OK
    assert {h.key: h.value for h in ok.response_headers_to_add}["RateLimit-Remaining"] == "0"
    assert over.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    headers = {h.key: h.value for h in over.response_headers_to_add}
    assert headers[STATUS_HEADER] == "503" and headers["content-type"].startswith("application/json")
    assert "Retry-After" in headers and json.loads(over.raw_body) == {"message": "later"}
    assert other.overall_code == rls_pb2.RateLimitResponse.OK  # no plan: nothing to limit


async def test_service_beside_envoy_stops_cleanly() -> None:
    # the agent's supervision: Envoy's end ends it; cancelling it (a signal) leaves the service stoppable
    import asyncio

    from isthmus.dp.gateway_services import beside, rate_limit_service

    bootstrap: dict[str, Any] = {"static_resources": {"clusters": []}}
    async with rate_limit_service(True, bootstrap) as service:
        assert service is not None
        cluster = bootstrap["static_resources"]["clusters"][0]
        assert cluster["name"] == "isthmus_ratelimit"
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert address["socket_address"] == {"address": "127.0.0.1", "port_value": service.port}
        await beside(asyncio.sleep(0), service)
        envoy = asyncio.Event()

        async def running() -> None:
            await envoy.wait()

        task = asyncio.ensure_future(beside(running(), service))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert service.stopped.is_set()
    async with rate_limit_service(False, bootstrap) as nothing:
        assert nothing is None
