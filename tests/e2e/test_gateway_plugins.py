"""Kong plugins end to end: a real control plane, a real gateway Envoy, plugins made through the Admin API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import App, ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, httpx.Client, App, Path]]:
    tmp = tmp_path_factory.mktemp("gateway-plugins")
    cp = ControlPlane(tmp).start()
    alpha = App(tmp, "alpha").start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    try:
        cp.apply(MESH)
        yield cp, kong, alpha, tmp
    finally:
        kong.close()
        alpha.stop()
        cp.stop()


def test_request_termination_and_cors(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    _created(kong.put("/services/alpha", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(kong.put("/services/alpha/routes/open", json={"paths": ["/open"]}))
    _created(kong.put("/services/alpha/routes/closed", json={"paths": ["/closed"]}))
    # a bad config is refused with Kong's error body, naming the field
    bad = kong.post(
        "/routes/closed/plugins", json={"name": "request-termination", "config": {"status_code": 99}}
    )
    assert bad.status_code == 400
    assert bad.json()["fields"] == {"config": {"status_code": "value should be between 100 and 599"}}
    _created(
        kong.post(
            "/routes/closed/plugins",
            json={"name": "request-termination", "config": {"status_code": 403, "message": "closed for now"}},
        )
    )
    gw = Gateway(tmp, cp, "edge-plugins").start()
    try:
        wait_for(lambda: gw.get("/closed/x").status_code == 403, 60, what="request-termination on /closed")
        closed = gw.get("/closed/x")
        assert closed.json() == {"message": "closed for now"}
        assert closed.headers["content-type"].startswith("application/json")
        assert _json(gw.get("/open/x"))["service"] == "alpha"
        # a service-wide cors: the preflight is answered with the allowed origin, other origins get no CORS headers
        _created(
            kong.post(
                "/services/alpha/plugins",
                json={"name": "cors", "config": {"origins": ["http://app.example"], "methods": ["GET", "POST"],
                                                 "max_age": 600, "credentials": True}},
            )
        )  # fmt: skip
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}

        def answered() -> bool:
            response = gw.http.options("/open/x", headers=preflight)
            return bool(response.headers.get("access-control-allow-origin") == "http://app.example")

        wait_for(answered, 30, what="cors preflight")
        response = gw.http.options("/open/x", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-methods"] == "GET,POST"
        assert response.headers["access-control-max-age"] == "600"
        assert response.headers["access-control-allow-credentials"] == "true"
        simple = gw.get("/open/x", headers={"Origin": "http://app.example"})
        assert (
            simple.status_code == 200
            and simple.headers["access-control-allow-origin"] == "http://app.example"
        )
        other = gw.get("/open/x", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # the route's own request-termination still answers (cors headers on it too, as Kong runs cors first)
        assert gw.get("/closed/x", headers={"Origin": "http://app.example"}).status_code == 403
        # removing the plugin opens the route again
        plugin_id = next(
            p["id"] for p in kong.get("/plugins").json()["data"] if p["name"] == "request-termination"
        )
        assert kong.delete(f"/plugins/{plugin_id}").status_code == 204
        wait_for(lambda: gw.get("/closed/x").status_code == 200, 30, what="termination removed")
        assert _json(gw.get("/closed/x"))["service"] == "alpha"
    finally:
        gw.stop()


def test_correlation_id(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    _created(kong.put("/services/corr", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(kong.put("/services/corr/routes/corr", json={"paths": ["/corr"]}))
    config = {"header_name": "X-Corr", "generator": "uuid", "echo_downstream": True}
    _created(kong.post("/routes/corr/plugins", json={"name": "correlation-id", "config": config}))
    gw = Gateway(tmp, cp, "edge-corr").start()
    try:
        wait_for(lambda: "x-corr" in gw.get("/corr").headers, 60, what="correlation-id on /corr")
        first, second = gw.get("/corr"), gw.get("/corr")
        made = first.headers["x-corr"]
        assert len(made) == 36 and made != second.headers["x-corr"]  # a fresh UUID per request
        assert _json(first)["headers"]["x-corr"] == made  # the upstream got the same value
        kept = gw.get("/corr", headers={"X-Corr": "client-id-1"})
        assert kept.headers["x-corr"] == "client-id-1" and _json(kept)["headers"]["x-corr"] == "client-id-1"
    finally:
        gw.stop()


def test_request_size_limiting(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    _created(kong.put("/services/sized", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(kong.put("/services/sized/routes/sized", json={"paths": ["/sized"]}))
    config = {"allowed_payload_size": 1, "size_unit": "kilobytes"}
    _created(kong.post("/routes/sized/plugins", json={"name": "request-size-limiting", "config": config}))
    gw = Gateway(tmp, cp, "edge-sized").start()
    try:
        wait_for(
            lambda: gw.http.post("/sized", content=b"x" * 2000).status_code == 413, 60, what="size limit"
        )
        too_big = gw.http.post("/sized", content=b"x" * 1025)
        assert too_big.status_code == 413 and too_big.json() == {"message": "Request size limit exceeded"}
        assert _json(gw.http.post("/sized", content=b"x" * 1024))["service"] == "alpha"

        def chunks() -> Iterator[bytes]:
            yield from (b"y" * 600, b"y" * 600)

        assert (
            gw.http.post("/sized", content=chunks()).status_code == 413
        )  # no Content-Length: Envoy's buffer
    finally:
        gw.stop()


def test_rate_limiting_local(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    _created(kong.put("/services/limited", json={"url": f"http://127.0.0.1:{alpha.port}"}))
    _created(kong.put("/services/limited/routes/limited", json={"paths": ["/limited"]}))
    gw = Gateway(tmp, cp, "edge-limited").start()
    try:
        wait_for(lambda: gw.get("/limited").status_code == 200, 60, what="gateway serving /limited")
        # an hour window: nothing refills during the test, so the count is exact
        config = {"hour": 3, "limit_by": "ip"}
        _created(kong.post("/routes/limited/plugins", json={"name": "rate-limiting", "config": config}))
        wait_for(lambda: "ratelimit-limit" in gw.get("/limited").headers, 30, what="rate limit applied")
        statuses = [gw.get("/limited") for _ in range(4)]
        refused = [r for r in statuses if r.status_code == 429]
        assert refused, [r.status_code for r in statuses]
        assert refused[0].json() == {"message": "API rate limit exceeded"}
        assert refused[0].headers["content-type"].startswith("application/json")
        # Kong's header names
        assert refused[0].headers["ratelimit-remaining"] == "0"
        assert refused[0].headers["x-ratelimit-remaining-hour"] == "0"
        assert refused[0].headers["x-ratelimit-limit-hour"] == "3"
        # Envoy's bucket gains a token every 3600 / 3 s: Retry-After is the longest wait, the reset the one left
        assert refused[0].headers["retry-after"] == "1200"
        assert 0 < int(refused[0].headers["ratelimit-reset"]) <= 1200
        assert "retry-after" not in statuses[0].headers and statuses[0].status_code == 200
        # Kong's rate-limit body is for Envoy's own 429s: a request-termination 429 keeps its message
        _created(kong.put("/services/limited/routes/slow", json={"paths": ["/slow"]}))
        slow = {"status_code": 429, "message": "slow down"}
        _created(kong.post("/routes/slow/plugins", json={"name": "request-termination", "config": slow}))
        wait_for(lambda: gw.get("/slow").status_code == 429, 30, what="request-termination 429")
        assert gw.get("/slow").json() == {"message": "slow down"}
    finally:
        gw.stop()
