"""rate-limiting with ``policy: redis`` end to end: a real control plane, two gateway agents of one workspace
(real Envoys, each with its rate-limit service), a real redis-server holding the shared counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.harness import App, ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

Setup = tuple[ControlPlane, httpx.Client, App, RedisServer, Gateway, Gateway]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway-ratelimit-redis")
    cp = ControlPlane(tmp).start()
    alpha = App(tmp, "alpha").start()
    redis = RedisServer(tmp).start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    gateways: list[Gateway] = []
    try:
        cp.apply(MESH)
        _created(kong.put("/services/alpha", json={"url": f"http://127.0.0.1:{alpha.port}"}))
        _created(kong.put("/services/alpha/routes/shared", json={"paths": ["/shared"]}))
        gateways += [Gateway(tmp, cp, "edge-rl-1").start(), Gateway(tmp, cp, "edge-rl-2").start()]
        for gw in gateways:
            wait_for(_answers(gw, "/shared", 200), 60, what=f"{gw.name} serving")
        yield cp, kong, alpha, redis, gateways[0], gateways[1]
    finally:
        for gw in gateways:
            gw.stop()
        kong.close()
        redis.stop()
        alpha.stop()
        cp.stop()


def _answers(gw: Gateway, path: str, status: int) -> Callable[[], bool]:
    return lambda: gw.get(path).status_code == status


def _limited(gw: Gateway) -> Callable[[], bool]:
    return lambda: "x-ratelimit-limit-minute" in gw.get("/shared").headers


def _plugin_id(kong: httpx.Client) -> str:
    return str(next(p["id"] for p in kong.get("/plugins").json()["data"] if p["name"] == "rate-limiting"))


def _clear_counts(redis: RedisServer) -> None:
    """Start from empty counters, early enough in a minute that 11 requests fall in the same window."""
    if time.gmtime().tm_sec >= 50:
        time.sleep(61 - time.gmtime().tm_sec)
    client = redis.client()
    client.flushall()
    client.close()


def test_one_limit_shared_by_two_gateways(setup: Setup) -> None:
    _, kong, _, redis, one, two = setup
    # Kong's documented shape: the limit, the policy and the redis record
    config = {"minute": 10, "policy": "redis", "limit_by": "ip",
              "redis": {"host": "127.0.0.1", "port": redis.port, "database": 0}}  # fmt: skip
    _created(kong.post("/routes/shared/plugins", json={"name": "rate-limiting", "config": config}))
    for gw in (one, two):
        wait_for(_limited(gw), 30, what=f"{gw.name} limited")
    _clear_counts(redis)
    answers = [(one if i % 2 else two).get("/shared") for i in range(11)]
    assert [r.status_code for r in answers] == [200] * 10 + [429]
    assert _json(answers[0])["service"] == "alpha"
    first, last_ok, refused = answers[0], answers[9], answers[10]
    assert first.headers["x-ratelimit-limit-minute"] == "10"
    assert first.headers["x-ratelimit-remaining-minute"] == "9"
    assert first.headers["ratelimit-limit"] == "10"
    assert first.headers["ratelimit-remaining"] == "9"
    assert 1 <= int(first.headers["ratelimit-reset"]) <= 60
    assert last_ok.headers["ratelimit-remaining"] == "0"
    # Kong's refusal: its body, its headers, Retry-After
    assert refused.json() == {"message": "API rate limit exceeded"}
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.headers["x-ratelimit-remaining-minute"] == "0"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"]
    assert "x-envoy-ratelimited" not in refused.headers
    # both gateways see the same count
    assert one.get("/shared").status_code == 429 and two.get("/shared").status_code == 429
    # Kong's key in Redis: ratelimit:<route>:<service>:<client>:<window start>:minute
    client = redis.client()
    keys = [str(k) for k in client.keys("ratelimit:*")]
    client.close()
    route_id = kong.get("/routes/shared").json()["id"]
    assert len(keys) == 1 and keys[0].startswith(
        f"ratelimit:{route_id}:00000000-0000-0000-0000-000000000000:127.0.0.1:"
    )
    assert keys[0].endswith(":minute")
    assert kong.delete(f"/plugins/{_plugin_id(kong)}").status_code == 204


def test_redis_down(setup: Setup) -> None:
    _, kong, _, redis, one, two = setup
    # the deprecated flat fields, custom answers, hidden headers
    config = {"minute": 10, "policy": "redis", "limit_by": "ip", "redis_host": "127.0.0.1",
              "redis_port": redis.port, "redis_timeout": 500, "hide_client_headers": True,
              "error_code": 503, "error_message": "too many"}  # fmt: skip
    _created(kong.post("/routes/shared/plugins", json={"name": "rate-limiting", "config": config}))
    plugin = _plugin_id(kong)

    def refused() -> bool:
        return one.get("/shared").status_code == 503

    wait_for(refused, 30, what="the custom refusal")  # the probes fill the count, then it answers 503
    answer = one.get("/shared")
    assert answer.status_code == 503 and answer.json() == {"message": "too many"}
    assert not [h for h in answer.headers if "ratelimit" in h.lower() or h.lower() == "retry-after"]
    assert "x-isthmus-ratelimit-status" not in answer.headers
    redis.stop()
    try:
        # fault_tolerant (the default): traffic passes while Redis is down
        assert [one.get("/shared").status_code, two.get("/shared").status_code] == [200, 200]
        _created(kong.patch(f"/plugins/{plugin}", json={"config": {**config, "fault_tolerant": False}}))

        def failing() -> bool:
            return one.get("/shared").status_code == 500

        wait_for(failing, 30, what="fault_tolerant false")
        for gw in (one, two):
            wait_for(_answers(gw, "/shared", 500), 30, what=f"{gw.name}: Kong's 500")
            answer = gw.get("/shared")
            assert answer.json() == {"message": "An unexpected error occurred"}
            assert answer.headers["content-type"].startswith("application/json")
    finally:
        redis.start()
    assert kong.delete(f"/plugins/{plugin}").status_code == 204


def test_limit_by_header_falls_back_to_the_address(setup: Setup) -> None:
    _, kong, _, redis, one, two = setup
    config = {"hour": 2, "policy": "redis", "limit_by": "header", "header_name": "X-Team",
              "redis": {"host": "127.0.0.1", "port": redis.port}}  # fmt: skip
    _created(kong.post("/routes/shared/plugins", json={"name": "rate-limiting", "config": config}))
    for gw in (one, two):
        wait_for(_limits_hourly(gw), 30, what=f"{gw.name} limited per hour")
    _clear_counts(redis)  # an hour starts on a minute: the same guard keeps the requests in one window
    client = redis.client()
    blue = [(one if i % 2 else two).get("/shared", headers={"X-Team": "blue"}).status_code for i in range(3)]
    red = [two.get("/shared", headers={"X-Team": "red"}).status_code for _ in range(2)]
    anonymous = [one.get("/shared").status_code for _ in range(3)]
    assert (blue, red, anonymous) == ([200, 200, 429], [200, 200], [200, 200, 429])
    identifiers = sorted(k.split(":")[3] for k in (str(k) for k in client.keys("ratelimit:*")))
    client.close()
    assert identifiers == ["127.0.0.1", "blue", "red"]
    assert kong.delete(f"/plugins/{_plugin_id(kong)}").status_code == 204


def _limits_hourly(gw: Gateway) -> Callable[[], bool]:
    return lambda: "x-ratelimit-limit-hour" in gw.get("/shared", headers={"X-Team": "probe"}).headers
