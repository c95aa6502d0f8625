"""Kong's router end to end: a real control plane, a real gateway Envoy, Kong configuration posted to ``/config``.

* A table of request → route cases for Kong's priority (``traditional_compatible``, as its code orders routes):
  every route answers its own name (request-termination), and each case is also checked against
  :mod:`isthmus.gateway.router` (the Python model of Kong's router) so the model and Envoy agree.
* The examples of Kong's routing docs (the traditional router guide and the Route entity page), applied unchanged
  (a service and a route name added) and behaving as the docs say.
* Upstream health checks: an active check takes a failing target out and back in; a passive check ejects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from isthmus.gateway.router import Request, RouteSpec, match
from tests.e2e.harness import App, ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _json, _self_signed, _served_name

pytestmark = pytest.mark.e2e

TIE_HIGH = "ffffffff-0000-4000-8000-000000000001"
TIE_LOW = "00000000-0000-4000-8000-000000000001"
SNI_HIGH = "eeeeeeee-0000-4000-8000-000000000001"
SNI_LOW = "11111111-0000-4000-8000-000000000001"

# name -> Kong route fields (each route answers 200 {"message": name})
PRIORITY_ROUTES: dict[str, dict[str, Any]] = {
    "root": {"paths": ["/"]},
    "v1": {"paths": ["/v1"]},
    "v1-users": {"paths": ["/v1/users"]},
    "status-re": {"paths": [r"~/status/\d+"]},
    "version-status-re": {"paths": [r"~/version/\d+/status/\d+"], "regex_priority": 6},
    "version": {"paths": ["/version"]},
    "version-any-re": {"paths": ["~/version/any/"]},
    "post-v1": {"methods": ["POST"], "paths": ["/v1"]},
    "host-exact": {"hosts": ["api.example.com"]},
    "host-suffix": {"hosts": ["*.example.com"]},
    "host-prefix": {"hosts": ["shop.example.*"], "paths": ["/shop"]},
    "host-v1": {"hosts": ["api.example.com"], "paths": ["/v1"]},
    "header-v1": {"headers": {"x-version": ["2"]}, "paths": ["/v1"]},
    "wild-v1": {"hosts": ["*.example.com"], "paths": ["/v1"]},
    "one-header": {"headers": {"x-a": ["1"]}},
    "two-headers": {"headers": {"x-a": ["1"], "x-b": ["2"]}},
    "rp-low": {"paths": ["~/rp/a"], "regex_priority": 1},
    "rp-high": {"paths": ["~/rp/[0-9]+"], "regex_priority": 10},
    "rp-any": {"paths": ["~/rp/"]},
    "rp-prefix": {"paths": ["/rp/a/b/c"]},
    "methods-host-path": {"methods": ["GET", "PUT"], "hosts": ["m.example.com"], "paths": ["/m"]},
    "tie-high": {"id": TIE_HIGH, "paths": ["/tie"]},
    "tie-low": {"id": TIE_LOW, "paths": ["/tie"]},
    "app": {"paths": ["/app"]},
    "app-mobile": {"headers": {"x-client": ["~*^mobile"]}, "paths": ["/app"]},
    "secure": {"paths": ["/secure"], "protocols": ["https"]},
    "split": {"paths": ["/sp", "/split/deep/path", "~/sp/[0-9]+$"]},
    "split-mid": {"paths": ["/split/deep"]},
    "sni-a": {"id": SNI_HIGH, "paths": ["/sni"], "snis": ["a.sni.test"], "protocols": ["https"]},
    "sni-wild": {"id": SNI_LOW, "paths": ["/sni"], "snis": ["*.sni.test"]},
}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    expected: str | int  # a route name, or a status Kong answers itself
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    sni: str | None = None  # over TLS with this SNI ("" for TLS without SNI)
    why: str = ""


CASES: list[Case] = [
    Case("GET", "/anything", "root", why="the catch-all prefix"),
    Case("GET", "/v1", "v1"),
    Case("GET", "/v1/x", "v1"),
    Case("GET", "/v1/users/7", "v1-users", why="longest prefix first"),
    Case("POST", "/v1/users", "post-v1", why="two fields beat a longer prefix"),
    Case("GET", "/status/42", "status-re", why="regex before the / prefix"),
    Case("GET", "/status/abc", "root", why="the regex does not match"),
    Case("GET", "/version/1/status/2", "version-status-re", why="regex_priority 6 and regex before prefix"),
    Case("GET", "/version/any/x", "version-any-re", why="a regex beats the /version prefix"),
    Case("GET", "/version/x", "version"),
    Case("GET", "/version", "version"),
    Case("GET", "/", "host-exact", host="api.example.com", why="a plain host beats a host-less path"),
    Case("GET", "/", "host-exact", host="api.example.com:8000", why="a host without a port accepts any port"),
    Case("GET", "/v1", "host-v1", host="API.Example.COM", why="hosts compare case-insensitively"),
    Case("GET", "/v1", "wild-v1", host="x.example.com", why="wildcard host and path: two fields"),
    Case("GET", "/v1", "header-v1", host="x.example.com", headers={"x-version": "2"}, why="more headers"),
    Case("GET", "/v1", "host-v1", host="api.example.com", headers={"x-version": "2"}, why="plain host first"),
    Case("GET", "/x", "root", host="x.example.com", why="wildcard host only loses to / (path length)"),
    Case("GET", "/shop/1", "host-prefix", host="shop.example.net", why="x.* wildcard host"),
    Case("GET", "/shop/1", "root", host="shop.other.net"),
    Case("GET", "/x", "one-header", headers={"x-a": "1"}, why="a header route beats a path route"),
    Case("GET", "/x", "two-headers", headers={"x-a": "1", "x-b": "2"}, why="more header names first"),
    Case("GET", "/x", "root", headers={"x-a": "2"}, why="header values must match"),
    Case("GET", "/rp/a/b/c", "rp-low", why="any regex before a longer prefix; regex_priority 1 over 0"),
    Case("GET", "/rp/5", "rp-high", why="regex_priority 10"),
    Case("GET", "/rp/zz", "rp-any"),
    Case("GET", "/m", "methods-host-path", host="m.example.com", why="three fields"),
    Case("PUT", "/m/x", "methods-host-path", host="m.example.com"),
    Case("DELETE", "/m", "root", host="m.example.com", why="the method does not match"),
    Case("GET", "/tie", "tie-high", why="equal priorities: the greater UUID first"),
    Case("GET", "/app", "app-mobile", headers={"x-client": "Mobile-iOS"}, why="~* header regex, any case"),
    Case("GET", "/app", "app", headers={"x-client": "desktop"}),
    Case("GET", "/secure", 426, why="https-only route over plain HTTP"),
    Case("GET", "/v1/../status/7", "status-re", why="dot segments removed before routing"),
    Case("GET", "/%76ersion/any/", "version-any-re", why="unreserved octets decoded before routing"),
    Case("GET", "/V1", "root", why="paths are case-sensitive"),
    Case("GET", "/split/deep/path/x", "split", why="split route: its 16-byte prefix group"),
    Case("GET", "/split/deep/x", "split-mid"),
    Case("GET", "/sp/12", "split", why="split route: its regex group"),
    Case("GET", "/spx", "split", why="split route: its /sp group"),
    Case(
        "GET", "/sni", 426, why="SNIs do not count over plain HTTP: sni-a (greater UUID) matches, https only"
    ),
    Case("GET", "/sni", "sni-a", sni="a.sni.test"),
    Case("GET", "/sni", "sni-wild", sni="b.sni.test", why="*.x SNI"),
    Case("GET", "/sni", "root", sni="other.test", why="no route for that SNI"),
    Case("GET", "/secure", "secure", sni="a.sni.test", why="https-only route over TLS"),
]


def _route_name_body(name: str) -> dict[str, Any]:
    return {"name": "request-termination", "config": {"status_code": 200, "message": name}}


def _config(
    routes: Mapping[str, Mapping[str, Any]], url: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A declarative file: one service holding ``routes``, each answering its name."""
    nested = [
        {"name": name, **fields, "plugins": [_route_name_body(name)]} for name, fields in routes.items()
    ]
    return {
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": url, "routes": nested}],
        **(extra or {}),
    }


def _post_config(kong: httpx.Client, workspace: str, doc: Mapping[str, Any]) -> None:
    response = kong.post(f"/{workspace}/config", json=doc)
    assert response.status_code == 201, response.text


def _send(gw: Gateway, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.host is not None:
        headers["Host"] = case.host
    if case.sni is None:
        return gw.http.request(case.method, case.path, headers=headers)
    with httpx.Client(base_url=f"https://127.0.0.1:{gw.tls_port}", verify=False, timeout=5) as client:
        extensions = {"sni_hostname": case.sni} if case.sni else {}
        return client.request(case.method, case.path, headers=headers, extensions=extensions)


def _answer(response: httpx.Response) -> str | int:
    if response.status_code == 200 and response.content:  # a HEAD answer has no body: its status
        return str(response.json()["message"])
    return response.status_code


def _model(specs: Sequence[RouteSpec], case: Case, port: int) -> str | int:
    raw = case.path
    request = Request(
        method=case.method,
        path=raw,
        host=case.host or f"127.0.0.1:{port}",
        headers=dict(case.headers),
        sni=case.sni or None,
        scheme="https" if case.sni is not None else "http",
        port=port,
    )
    found = match(specs, request)
    if found is None:
        return 404
    if found.https_redirect is not None:
        return found.https_redirect
    return found.route.name or found.route.id


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, httpx.Client, App, Path]]:
    tmp = tmp_path_factory.mktemp("gateway-routing")
    cp = ControlPlane(tmp).start()
    alpha = App(tmp, "alpha").start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=30)
    try:
        cp.apply(MESH)
        yield cp, kong, alpha, tmp
    finally:
        kong.close()
        alpha.stop()
        cp.stop()


def test_kong_priority_table(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    assert len(CASES) >= 30
    cert, key = _self_signed("*.sni.test")
    api_cert, api_key = _self_signed("api.*")
    certificates = {
        "certificates": [
            {"cert": cert, "key": key, "snis": [{"name": "*.sni.test"}]},
            {"cert": api_cert, "key": api_key, "snis": [{"name": "api.*"}]},
        ]
    }
    _post_config(kong, "prio", _config(PRIORITY_ROUTES, f"http://127.0.0.1:{alpha.port}", certificates))
    stored = kong.get("/prio/routes", params={"size": 1000}).json()["data"]
    assert len(stored) == len(PRIORITY_ROUTES)
    specs = [RouteSpec.from_kong(r, {"id": "svc", "path": None}) for r in stored]
    gw = Gateway(tmp, cp, "edge-prio", workspace="prio", tls=True).start()
    try:
        wait_for(lambda: _answer(_send(gw, CASES[0])) == "root", 60, what="priority routes served")
        wait_for(lambda: _answer(_send(gw, CASES[-1])) == "secure", 30, what="TLS listener served")
        wrong = []
        for case in CASES:
            got = _answer(_send(gw, case))
            model = _model(specs, case, gw.tls_port if case.sni is not None else gw.port)
            if got != case.expected or model != case.expected:
                wrong.append(f"{case}: envoy {got!r}, model {model!r}")
        assert not wrong, "\n".join(wrong)
        # Kong's certificate selection: *.x and x.* SNI entities
        assert _served_name(gw.tls_port, "a.sni.test") == "*.sni.test"
        assert _served_name(gw.tls_port, "api.example") == "api.*"
        # no route at all: Kong's 404 body (the catch-all removed)
        kong.delete("/prio/routes/root").raise_for_status()
        wait_for(lambda: gw.get("/nothing").status_code == 404, 30, what="catch-all removed")
        assert gw.get("/nothing").json() == {"message": "no Route matched with those values"}
    finally:
        gw.stop()


# -- Kong's routing docs, applied unchanged -----------------------------------------------------------------------

# (routes, [(method, path, host, headers, expected route name or 404)]) from developer.konghq.com's "Traditional
# router" page; only a route name is added. The regex-order example is written there as "~/status/d+" (the page's
# markdown ate the backslashes its ordered list shows): the patterns are the list's, \d+.
DOCS_EXAMPLES: list[
    tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, dict[str, str], str | int]]]
] = [
    (
        {
            "three-fields": {
                "hosts": ["example.com", "foo-service.com"],
                "paths": ["/foo", "/bar"],
                "methods": ["GET"],
            }
        },
        [
            ("GET", "/foo", "example.com", {}, "three-fields"),
            ("GET", "/bar", "foo-service.com", {}, "three-fields"),
            ("GET", "/foo/hello/world", "example.com", {}, "three-fields"),
            ("GET", "/", "example.com", {}, 404),
            ("POST", "/foo", "example.com", {}, 404),
            ("GET", "/foo", "foo.com", {}, 404),
        ],
    ),
    (
        {
            "hosts": {"hosts": ["example.com", "foo-service.com"]},
            "region": {"headers": {"region": ["north"]}},
            "wildcard": {"hosts": ["*.example.com", "service.com"]},
            "version": {"headers": {"version": ["v1", "v2"]}},
        },
        [
            ("GET", "/", "example.com", {}, "hosts"),
            ("GET", "/", "foo-service.com", {}, "hosts"),
            ("GET", "/", "localhost", {"Region": "North"}, "region"),
            ("GET", "/", "an.example.com", {}, "wildcard"),
            ("GET", "/", "service.com", {}, "wildcard"),
            ("GET", "/", "localhost", {"version": "v1"}, "version"),
            ("GET", "/", "localhost", {"version": "v2"}, "version"),
            ("GET", "/", "localhost", {"version": "v3"}, 404),
        ],
    ),
    (
        {
            "paths": {"paths": ["/service", "/hello/world"]},
            "longer": {"paths": ["/service/resource/deeper"]},
            "status": {"paths": [r"~/status/\d+"], "regex_priority": 0},
            "version-status": {"paths": [r"~/version/\d+/status/\d+"], "regex_priority": 6},
            "version": {"paths": ["/version"]},
            "version-any": {"paths": ["~/version/any/"]},
            "methods": {"methods": ["GET", "HEAD"]},
        },
        [
            ("GET", "/service", "example.com", {}, "paths"),
            ("GET", "/service/resource?param=value", "example.com", {}, "paths"),
            ("GET", "/hello/world/resource", "anything.com", {}, "paths"),
            ("GET", "/service/resource/deeper/x", "example.com", {}, "longer"),
            ("GET", "/version/1/status/2", "example.com", {}, "version-status"),
            ("GET", "/status/2", "example.com", {}, "status"),
            ("GET", "/version/any/thing", "example.com", {}, "version-any"),
            ("GET", "/version/2", "example.com", {}, "version"),
            ("GET", "/", "example.com", {}, "methods"),
            ("HEAD", "/resource", "example.com", {}, 200),  # only "methods" matches it
            ("POST", "/resource", "example.com", {}, 404),
            ("DELETE", "/resource", "example.com", {}, 404),
        ],
    ),
    (
        {"host": {"hosts": ["example.com"]}, "host-post": {"hosts": ["example.com"], "methods": ["POST"]}},
        [("GET", "/", "example.com", {}, "host"), ("POST", "/", "example.com", {}, "host-post")],
    ),
]


def _docs_answer(gw: Gateway, method: str, path: str, host: str, headers: dict[str, str]) -> str | int:
    return _answer(gw.http.request(method, path, headers={"Host": host, **headers}))


def test_kong_routing_docs_examples(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    gw = Gateway(tmp, cp, "edge-docs", workspace="docs").start()
    try:
        for routes, cases in DOCS_EXAMPLES:
            _post_config(kong, "docs", _config(routes, f"http://127.0.0.1:{alpha.port}"))
            first = cases[0]

            def applied(case: tuple[str, str, str, dict[str, str], str | int] = first) -> bool:
                return _docs_answer(gw, *case[:4]) == case[4]

            wait_for(applied, 60, what=f"docs example {list(routes)}")
            answers = [(case, _docs_answer(gw, *case[:4])) for case in cases]
            assert [a for c, a in answers] == [c[4] for c, a in answers], answers
    finally:
        gw.stop()


# The Route entity page: strip_path, preserve_host and the path_handling v0 table (service.path /s), proxied to
# the echo app, which answers the path and Host it got.
PATH_ROWS: list[tuple[str, bool, str, str]] = [
    # (route path, strip_path, request path, upstream path)
    ("/fv0", False, "/fv0/req", "/s/fv0/req"),
    ("/fv0", False, "/fv0", "/s/fv0"),
    ("/tv0", True, "/tv0/req", "/s/req"),
    ("/tv0", True, "/tv0", "/s"),
    ("/fv0/", False, "/fv0/req", "/s/fv0/req"),
    ("/fv0/", False, "/fv0/", "/s/fv0/"),  # the page prints "/s/fv01/", a typo for this
    ("/tv0/", True, "/tv0/req", "/s/req"),
    ("/tv0/", True, "/tv0/", "/s/"),
]


def test_kong_route_page_examples(setup: tuple[ControlPlane, httpx.Client, App, Path]) -> None:
    cp, kong, alpha, tmp = setup
    base = f"http://127.0.0.1:{alpha.port}"
    doc = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "paths",
                "url": f"{base}/s",
                "routes": [
                    {"name": f"row-{i}", "paths": [path], "strip_path": strip, "path_handling": "v0"}
                    for i, (path, strip, _, _) in enumerate(PATH_ROWS)
                ],
            },
            {
                "name": "plain",
                "url": base,
                "routes": [
                    {"name": "strip", "paths": ["/service"], "strip_path": True},
                    {"name": "strip-regex", "paths": [r"~/version/\d+/service"], "strip_path": True},
                    {"name": "host", "hosts": ["service.com"]},
                    {"name": "preserve", "hosts": ["preserved.com"], "preserve_host": True},
                ],
            },
        ],
    }
    _post_config(kong, "pages", doc)
    gw = Gateway(tmp, cp, "edge-pages", workspace="pages").start()
    try:
        wait_for(lambda: gw.get("/service/path/to/resource").status_code == 200, 60, what="route page config")
        assert _json(gw.get("/service/path/to/resource"))["path"] == "/path/to/resource"
        # the docs write this route's regex without Kong 3.x's "~" marker; with it, the whole match is stripped
        assert _json(gw.get("/version/1/service/path/to/resource"))["path"] == "/path/to/resource"
        plain = _json(gw.get("/", headers={"Host": "service.com"}))
        assert (
            plain["headers"].get("x-forwarded-host") == "service.com"
        )  # the upstream got the Service's host
        kept = _json(gw.get("/", headers={"Host": "preserved.com"}))
        assert "x-forwarded-host" not in kept["headers"]  # Host preserved: nothing rewritten
        got = [(row, _json(gw.get(row[2]))["path"]) for row in PATH_ROWS]
        assert [p for _, p in got] == [row[3] for row, _ in got], got
    finally:
        gw.stop()


# -- health checks ------------------------------------------------------------------------------------------------


def _instances(gw: Gateway, path: str, count: int = 12) -> list[str]:
    out = []
    for _ in range(count):
        response = gw.get(path)
        out.append(
            str(response.json()["instance"]) if response.status_code == 200 else str(response.status_code)
        )
    return out


def test_active_health_check_takes_a_target_out_and_back(
    setup: tuple[ControlPlane, httpx.Client, App, Path],
) -> None:
    cp, kong, _, tmp = setup
    one = App(tmp, "hc", instance="hc-1").start()
    two = App(tmp, "hc", instance="hc-2").start()
    active = {
        "type": "http",
        "http_path": "/health",
        "timeout": 1,
        "healthy": {"interval": 1, "successes": 1},
        "unhealthy": {"interval": 1, "http_failures": 1, "tcp_failures": 1, "timeouts": 1},
    }
    doc = {
        "_format_version": "3.0",
        "upstreams": [
            {
                "name": "hc.upstream",
                "healthchecks": {"active": active},
                "targets": [{"target": f"127.0.0.1:{one.port}"}, {"target": f"127.0.0.1:{two.port}"}],
            }
        ],
        "services": [{"name": "hc", "host": "hc.upstream", "routes": [{"name": "hc", "paths": ["/hc"]}]}],
    }
    _post_config(kong, "health", doc)
    gw = Gateway(tmp, cp, "edge-health", workspace="health").start()
    try:
        wait_for(lambda: {"hc-1", "hc-2"} <= set(_instances(gw, "/hc")), 60, what="both targets serving")
        # hc-2's health endpoint fails: the probes take it out
        httpx.post(f"http://127.0.0.1:{two.port}/admin/health/fail").raise_for_status()
        wait_for(lambda: set(_instances(gw, "/hc", 20)) == {"hc-1"}, 30, what="hc-2 taken out")
        # and back in once it answers 200 again
        httpx.post(f"http://127.0.0.1:{two.port}/admin/health/ok").raise_for_status()
        wait_for(lambda: "hc-2" in _instances(gw, "/hc", 20), 30, what="hc-2 back in")
        # every target failing: 503 (no healthy upstream), as Kong's balancer answers
        for app in (one, two):
            httpx.post(f"http://127.0.0.1:{app.port}/admin/health/fail").raise_for_status()
        wait_for(lambda: set(_instances(gw, "/hc")) == {"503"}, 30, what="no healthy target")
    finally:
        gw.stop()
        one.stop()
        two.stop()


def test_passive_health_check_ejects_a_failing_target(
    setup: tuple[ControlPlane, httpx.Client, App, Path],
) -> None:
    cp, kong, _, tmp = setup
    good = App(tmp, "pc", instance="pc-good").start()
    bad = App(tmp, "pc", instance="pc-bad", fail_all=True).start()
    doc = {
        "_format_version": "3.0",
        "upstreams": [
            {
                "name": "pc.upstream",
                "healthchecks": {"passive": {"unhealthy": {"http_failures": 2, "http_statuses": [500, 503]}}},
                "targets": [{"target": f"127.0.0.1:{good.port}"}, {"target": f"127.0.0.1:{bad.port}"}],
            }
        ],
        "services": [{"name": "pc", "host": "pc.upstream", "routes": [{"name": "pc", "paths": ["/pc"]}]}],
    }
    _post_config(kong, "passive", doc)
    gw = Gateway(tmp, cp, "edge-passive", workspace="passive").start()
    try:
        wait_for(lambda: gw.get("/pc").status_code == 200, 60, what="passive upstream served")
        # the failing target answers 503 until two in a row eject it; then only the good one answers
        wait_for(lambda: set(_instances(gw, "/pc", 20)) == {"pc-good"}, 30, what="pc-bad ejected")
        stats = httpx.get(f"http://127.0.0.1:{gw.admin_port}/stats", params={"filter": "outlier_detection.ejections_enforced_consecutive_5xx"})  # fmt: skip
        assert any(line.rsplit(" ", 1)[-1] not in ("0", "") for line in stats.text.splitlines()), stats.text
    finally:
        gw.stop()
        good.stop()
        bad.stop()


def test_consistent_hashing_keeps_a_key_on_its_target(
    setup: tuple[ControlPlane, httpx.Client, App, Path],
) -> None:
    cp, kong, _, tmp = setup
    one = App(tmp, "ch", instance="ch-1").start()
    two = App(tmp, "ch", instance="ch-2").start()
    targets = [{"target": f"127.0.0.1:{one.port}"}, {"target": f"127.0.0.1:{two.port}"}]
    doc = {
        "_format_version": "3.0",
        "upstreams": [
            # hash_on uri_capture (the user in the matched regex path), else the X-User header
            {"name": "ch.upstream", "hash_on": "uri_capture", "hash_on_uri_capture": "user",
             "hash_fallback": "header", "hash_fallback_header": "X-User", "targets": targets},
        ],
        "services": [
            {"name": "ch", "host": "ch.upstream", "routes": [
                {"name": "users", "paths": ["~/users/(?<user>[a-z]+)/"]},
                {"name": "other", "paths": ["/other"]},
            ]},
        ],
    }  # fmt: skip
    _post_config(kong, "hashing", doc)
    gw = Gateway(tmp, cp, "edge-hashing", workspace="hashing").start()
    try:
        wait_for(lambda: gw.get("/users/alice/1").status_code == 200, 60, what="hashing upstream served")
        users = [f"user{chr(ord('a') + i)}" for i in range(16)]
        placed = {}
        for user in users:
            # the capture, not the rest of the path (stripped before the upstream sees it), picks the target
            seen = {_json(gw.get(f"/users/{user}/{n}"))["instance"] for n in range(4)}
            assert len(seen) == 1, (user, seen)
            placed[user] = seen.pop()
        assert set(placed.values()) == {"ch-1", "ch-2"}, placed
        got = _json(gw.get("/users/alice/x"))
        # the path copy the routes hash on stays in Envoy
        assert got["path"] == "/x" and "x-isthmus-hash-path" not in got["headers"]
        # no capture on this route: the fallback header
        for user in users[:4]:
            seen = {_json(gw.get(f"/other/{n}", headers={"X-User": user}))["instance"] for n in range(4)}
            assert len(seen) == 1, (user, seen)
    finally:
        gw.stop()
        one.stop()
        two.stop()
