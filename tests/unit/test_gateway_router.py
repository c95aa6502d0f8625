"""Kong's router (traditional_compatible) as isthmus.gateway.router reproduces it.

Cases cite Kong 3.10's ``spec/01-unit/08-router_spec.lua`` ("router_spec" + the ``it(...)`` title),
``spec/fixtures/router_path_handling_tests.lua`` ("path fixture" + row number), ``spec/01-unit/18-tools_uri_spec.lua``
("uri_spec") and the docs page ``app/gateway/routing/traditional.md`` of Kong/developer.konghq.com ("docs").
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from isthmus.gateway.router import (
    SPLIT_ROUTE_NAMESPACE,
    Request,
    RouteSpec,
    match,
    no_route_response,
    normalize_path,
    sort_routes,
    upstream_path,
)

ID = "e8fb37f1-102d-461e-9c51-6608a6bb81{:02d}"


def r(n: int, **fields: Any) -> RouteSpec:
    """Route ``n`` of a spec use case, with the spec's id pattern."""
    headers = fields.pop("headers", None)
    converted: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if headers is not None:
        converted["headers"] = tuple((k, tuple(v)) for k, v in headers.items())
    return RouteSpec(id=ID.format(n), **converted)


# router_spec "select()" lazy_setup: the shared use case (ids ...8101 to ...8115).
SELECT_USE_CASE = [
    r(1, hosts=["domain-1.org", "domain-2.org"]),
    r(2, methods=["TRACE"]),
    r(3, paths=["/my-route"]),
    r(4, paths=["/route-4"], hosts=["domain-1.org", "domain-2.org"]),
    r(5, hosts=["domain-1.org", "domain-2.org"], methods=["POST", "PUT", "PATCH"]),
    r(6, methods=["POST", "PUT", "PATCH"], paths=["/route-6"]),
    r(
        7,
        hosts=["domain-with-uri-1.org", "domain-with-uri-2.org"],
        methods=["POST", "PUT", "PATCH"],
        paths=["/my-route-uri"],
    ),
    r(8, paths=["/serviceless"]),
    r(9, headers={"location": ["my-location-1", "my-location-2"]}),
    r(10, headers={"location": ["my-location-1"], "version": ["v1", "v2"]}),
    r(11, headers={"location": ["my-location-1", "my-location-2"]}, paths=["/headers-uri"]),
    r(
        12,
        hosts=["domain-with-headers-1.org", "domain-with-headers-2.org"],
        headers={"location": ["my-location-1", "my-location-2"]},
        methods=["POST", "PUT", "PATCH"],
        paths=["/headers-host-uri-method"],
    ),
    r(13, hosts=["domain-1.org:321", "domain-2.org"]),
    r(14, hosts=["domain-3.org:321"]),
    r(15, headers={"user_agent": ["~*windows|linux|os\\s+x\\s*[\\d\\._]+|solaris|bsd"]}),
]

WILDCARD_HOSTS = [r(1, hosts=["*.route.com"]), r(2, hosts=["route.*"])]
# router_spec "does not take precedence over a plain host": plain hosts inserted around the wildcard ones.
PLAIN_AND_WILDCARD = [r(3, hosts=["plain.route.com"]), *WILDCARD_HOSTS, r(4, hosts=["route.com"])]
LONGER_URI = [r(1, paths=["/my-route/hello"]), r(2, paths=["/my-route"])]
SEVERAL_REGEX = [
    r(1, paths=[r"~/route/persons/\d{3}"]),
    r(2, paths=[r"~/route/persons/\d{3}/following"]),
    r(3, paths=[r"~/route/persons/\d{3}/[a-z]+"]),
]
REGEX_OVER_PREFIX = [r(1, paths=["/route/persons"]), r(2, paths=[r"~/route/persons/\d+/profile"])]
REGEX_OVER_EXACT = [r(1, paths=["/route/fixture"]), r(2, paths=["~/route/(fixture)"])]
MORE_HEADERS = [
    r(1, headers={"version": ["v1", "v2"], "user_agent": ["foo", "bar"]}),
    r(2, headers={"version": ["v1", "v2"], "user_agent": ["foo", "bar"], "location": ["east", "west"]}),
]
HEADERS_OVER_PATHS = [
    r(1, headers={"version": ["v1"]}, paths=["/my-route/hello"]),
    r(2, headers={"version": ["v1"], "location": ["us-east"]}, paths=["/my-route"]),
]
HALF_HOST_URI = [r(1, hosts=["host1.com"], paths=["/v1/path"]), r(2, hosts=["host2.com"], paths=["/"])]
HALF_REGEX_METHOD = [
    r(1, methods=["GET"], paths=[r"~/users/\d+/profile"]),
    r(2, methods=["POST"], paths=[r"~/users/\d*/profile"]),
]
METHOD_VS_PREFIX = [r(1, methods=["GET"]), r(2, paths=["/example"])]
ROOT_CATCH_ALL = [r(15, paths=["/"]), *SELECT_USE_CASE]
SAME_CATEGORY = [
    *[r(10 + i, hosts=["domain.org"], paths=["/my-uri"]) for i in range(1, 6)],
    r(21, hosts=["domain.org"], paths=["/my-target-uri"]),
]
WILDCARD_SNI = [r(1, snis=["*.sni.test"]), r(2, snis=["sni.*"])]
# docs "Route priority" / "Using regex in paths": regex_priority example (ids chosen so ties are visible).
DOCS_REGEX_PRIORITY = [
    r(1, paths=[r"~/status/\d+"], regex_priority=0),
    r(2, paths=[r"~/version/\d+/status/\d+"], regex_priority=6),
    r(3, paths=["/version"]),
    r(4, paths=["~/version/any/"]),
]

# (routes, method, path, host, headers, scheme, sni, expected route number or None, citation)
# fmt: off
CASES: list[tuple[list[RouteSpec], str, str, str, dict[str, Any], str, str | None, int | None, str]] = [
    (SELECT_USE_CASE, "GET", "/", "domain-1.org", {}, "http", None, 1, 'router_spec "[host]"'),
    (SELECT_USE_CASE, "GET", "/", "domain-1.org:80", {}, "http", None, 1, 'router_spec "[host] ignores default port"'),
    (SELECT_USE_CASE, "GET", "/", "domain-1.org:321", {}, "http", None, 13, 'router_spec "[host] matches specific port"'),
    (SELECT_USE_CASE, "GET", "/", "domain-3.org:321", {}, "http", None, 14, 'router_spec "[host] matches specific port on port-only route"'),
    (SELECT_USE_CASE, "GET", "/", "domain-3.org:123", {}, "http", None, None, 'router_spec "[host] fails just because of port on port-only route"'),
    (SELECT_USE_CASE, "GET", "/my-route", "domain.org", {}, "http", None, 3, 'router_spec "[uri]"'),
    (SELECT_USE_CASE, "GET", "/my-route-uri", "", {}, "http", None, 3, 'router_spec "[uri + empty host]"'),
    (SELECT_USE_CASE, "TRACE", "/", "domain.org", {}, "http", None, 2, 'router_spec "[method]"'),
    (SELECT_USE_CASE, "GET", "/route-4", "domain-1.org", {}, "http", None, 4, 'router_spec "[host + uri]"'),
    (SELECT_USE_CASE, "PUT", "/", "domain-2.org", {}, "http", None, 5, 'router_spec "[host + method]"'),
    (SELECT_USE_CASE, "PUT", "/route-6", "domain.org", {}, "http", None, 6, 'router_spec "[uri + method]"'),
    (SELECT_USE_CASE, "PUT", "/my-route-uri", "domain-with-uri-2.org", {}, "http", None, 7, 'router_spec "[host + uri + method]"'),
    (SELECT_USE_CASE, "GET", "/", "domain.org", {"location": "my-location-1"}, "http", None, 9, 'router_spec "single [headers] value"'),
    (SELECT_USE_CASE, "GET", "/", "domain.org", {"location": "my-location-1", "version": "v2"}, "http", None, 10, 'router_spec "multiple [headers] values"'),
    (SELECT_USE_CASE, "GET", "/headers-uri", "domain.org", {"location": "my-location-2"}, "http", None, 11, 'router_spec "[headers + uri]"'),
    (SELECT_USE_CASE, "PUT", "/headers-host-uri-method", "domain-with-headers-1.org", {"location": "my-location-2"}, "http", None, 12, 'router_spec "[host + headers + uri + method]"'),
    (SELECT_USE_CASE, "GET", "/", "domain.org", {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}, "http", None, 15, 'router_spec "single [headers] value" (regex header ~*)'),
    (SELECT_USE_CASE, "GET", "/", "domain.org", {"location": "my-location-3"}, "http", None, None, 'router_spec "misses" "invalid [headers]"'),
    (SELECT_USE_CASE, "GET", "/my", "domain.org", {}, "http", None, None, 'router_spec "misses" "does not match when given [uri] is in URI but not in prefix"'),
    (LONGER_URI, "GET", "/my-route/hello/world", "domain.org", {}, "http", None, 1, 'router_spec "does not supersede another route with a longer [uri]"'),
    (LONGER_URI, "GET", "/my-route/world", "domain.org", {}, "http", None, 2, 'router_spec "does not supersede another route with a longer [uri]"'),
    (SEVERAL_REGEX, "GET", "/route/persons/456", "domain.org", {}, "http", None, 1, 'router_spec "matches the right route when several ones have a [uri regex]"'),
    (REGEX_OVER_PREFIX, "GET", "/route/persons/123/profile", "domain.org", {}, "http", None, 2, 'router_spec "matches a [uri regex] even if a [prefix uri] got a match"'),
    (REGEX_OVER_EXACT, "GET", "/route/fixture", "domain.org", {}, "http", None, 2, 'router_spec "matches a [uri regex] even if a [uri] got an exact match"'),
    (WILDCARD_HOSTS, "GET", "/", "foo.route.com", {}, "http", None, 1, 'router_spec "[wildcard host]" "matches leftmost wildcards"'),
    (WILDCARD_HOSTS, "GET", "/", "route.org", {}, "http", None, 2, 'router_spec "[wildcard host]" "matches rightmost wildcards"'),
    (WILDCARD_HOSTS, "GET", "/", "route.org:123", {}, "http", None, 2, 'router_spec "[wildcard host]" "matches any port in request"'),
    (PLAIN_AND_WILDCARD, "GET", "/", "route.com", {}, "http", None, 4, 'router_spec "does not take precedence over a plain host"'),
    (PLAIN_AND_WILDCARD, "GET", "/", "plain.route.com", {}, "http", None, 3, 'router_spec "does not take precedence over a plain host"'),
    (PLAIN_AND_WILDCARD, "GET", "/", "foo.route.com", {}, "http", None, 1, 'router_spec "does not take precedence over a plain host"'),
    (MORE_HEADERS, "GET", "/", "", {"version": "v1", "user_agent": "foo", "location": ["north", "west"]}, "http", None, 2, 'router_spec "evaluates Routes with more [headers] first"'),
    (MORE_HEADERS, "GET", "/", "", {"VERSION": "V1", "User-Agent": "FOO"}, "http", None, 1, 'router_spec "names are case-insensitive" / "matches values in a case-insensitive way"'),
    (HEADERS_OVER_PATHS, "GET", "/my-route/hello", "domain.org", {"version": "v1", "location": "us-east"}, "http", None, 2, 'router_spec "more [headers] has priority over longer [paths]"'),
    (HALF_HOST_URI, "GET", "/v1/path", "host2.com", {}, "http", None, 2, 'router_spec "half [uri] and [host] match does not supersede another route"'),
    (HALF_REGEX_METHOD, "POST", "/users/123/profile", "domain.org", {}, "http", None, 2, 'router_spec "half [uri regex] and [method] match does not supersede another route"'),
    (METHOD_VS_PREFIX, "GET", "/example/status/200", "domain.org", {}, "http", None, 2, 'router_spec "[method] does not supersede [uri prefix]"'),
    (SELECT_USE_CASE, "TRACE", "/my-route", "domain.org", {}, "http", None, 3, 'router_spec "[host] and [uri] have higher priority than [method]"'),
    (ROOT_CATCH_ALL, "GET", "/my-route/hello/world", "domain.org", {}, "http", None, 3, 'router_spec "root / [uri]" "does not supersede another route"'),
    (ROOT_CATCH_ALL, "GET", "/foobar/baz", "domain.org", {}, "http", None, 15, 'router_spec "root / [uri]" "acts as a catch-all route"'),
    (SAME_CATEGORY, "GET", "/my-target-uri", "domain.org", {}, "http", None, 21, 'router_spec "multiple routes of same category with conflicting values"'),
    (WILDCARD_SNI, "GET", "/", "any.test", {}, "https", "foo.bar.sni.test", 1, 'router_spec "[wildcard sni]" "matches leftmost wildcards"'),
    (WILDCARD_SNI, "GET", "/", "any.test", {}, "https", "sni.foo.bar", 2, 'router_spec "[wildcard sni]" "matches rightmost wildcards"'),
    (WILDCARD_SNI, "GET", "/", "any.test", {}, "https", "foo.sni.test.bar", None, 'router_spec "[wildcard sni]" "doesn\'t match wildcard"'),
    (DOCS_REGEX_PRIORITY, "GET", "/version/1/status/200", "x", {}, "http", None, 2, "docs Route priority: regex_priority 6 first"),
    (DOCS_REGEX_PRIORITY, "GET", "/version/any/thing", "x", {}, "http", None, 4, "docs Route priority: regexes before prefix /version"),
    (DOCS_REGEX_PRIORITY, "GET", "/version/other", "x", {}, "http", None, 3, "docs Route priority: prefix when no regex matches"),
    (DOCS_REGEX_PRIORITY, "GET", "/status/42", "x", {}, "http", None, 1, "docs Route priority: regex_priority 0"),
    (LONGER_URI, "GET", "/my-route/./hello/../hello//x", "d", {}, "http", None, 1, "docs Path normalization: dot segments and // before matching"),
    (LONGER_URI, "GET", "/my-route/%68ello?x=/my-route", "d", {}, "http", None, 1, "docs Path normalization: unreserved %68 decoded; query ignored"),
]
# fmt: on


@pytest.mark.parametrize(
    ("routes", "method", "path", "host", "headers", "scheme", "sni", "expected", "source"),
    CASES,
    ids=[f"{i}-{case[-1][:60]}" for i, case in enumerate(CASES)],
)
def test_kong_route_selection(
    routes: list[RouteSpec],
    method: str,
    path: str,
    host: str,
    headers: dict[str, Any],
    scheme: str,
    sni: str | None,
    expected: int | None,
    source: str,
) -> None:
    found = match(
        routes, Request(method=method, path=path, host=host, headers=headers, scheme=scheme, sni=sni)
    )
    if expected is None:
        assert found is None, source
    else:
        assert found is not None, source
        assert found.route.id == ID.format(expected), source


def test_case_table_size() -> None:
    assert len(CASES) >= 30


def test_sort_order_matches_kong_priority_fields() -> None:
    # docs "Route priority": regex by regex_priority, then the remaining regexes, then prefix paths (longest first).
    order = [entry.route.id for entry in sort_routes([*DOCS_REGEX_PRIORITY, r(5, paths=["/version/long"])])]
    # Equal priorities (routes 1 and 4) are ordered by UUID, greater first, as the ATC router does.
    assert order == [ID.format(n) for n in (2, 4, 1, 5, 3)]


def test_split_route_gets_kong_uuid_v5_per_path_group() -> None:
    # transform.lua split_routes_and_services_by_path: one matcher per regex group / prefix length.
    route = r(1, paths=["~/regex.*$", "/long-path", "/one", "/two", "/three", "~/.*"])
    entries = sort_routes([route])
    groups = {entry.paths: entry.matcher_id for entry in entries}
    assert set(groups) == {("~/regex.*$", "~/.*"), ("/long-path",), ("/one", "/two"), ("/three",)}
    assert groups[("/one", "/two")] == str(uuid.uuid5(SPLIT_ROUTE_NAMESPACE, f"{route.id}#3"))
    # regexes first, then prefixes by length
    assert [e.paths for e in entries][:2] == [("~/regex.*$", "~/.*"), ("/long-path",)]
    # the regex group (~/.* matches everything) is tried before every prefix group
    found = match([route], Request("GET", "/two/x"))
    assert found is not None and found.matcher_id == groups[("~/regex.*$", "~/.*")]
    assert found.matched_path == "/two/x"
    found = match([r(1, paths=["/long-path", "/one", "/two"])], Request("GET", "/two/x"))
    assert found is not None and found.matched_path == "/two"
    assert found.matcher_id == str(uuid.uuid5(SPLIT_ROUTE_NAMESPACE, f"{route.id}#2"))


@pytest.mark.parametrize(
    ("raw", "merge", "expected"),
    [
        ("/a/b/c/", False, "/a/b/c/"),  # uri_spec "no normalization needed"
        (
            "/a%2fb%2fc/",
            False,
            "/a%2Fb%2Fc/",
        ),  # uri_spec reserved characters keep their escape, hex upper-cased
        ("/f%6f%6f", False, "/foo"),  # uri_spec unreserved characters are decoded
        ("/%2E", False, "/"),  # uri_spec
        ("//", False, "//"),  # uri_spec without merge
        ("/./.././../", False, "/"),  # uri_spec
        ("/a/b/c/./../../g", False, "/a/g"),  # uri_spec (RFC 3986 5.4)
        ("mid/content=5/../6", False, "mid/6"),  # uri_spec
        ("/////", True, "/"),  # uri_spec merge_slashes
        ("/a//b//", True, "/a/b/"),  # uri_spec merge_slashes
        ("/endel%C3%B8st", False, "/endeløst"),  # uri_spec utf-8
        (
            "/%C3%A4/a/%2e./a%2E//a/%2e/./a/../a/%2e%2E/%5f%99%af%2f%2F",
            True,
            "/ä/a./a/_\udc99\udcaf%2F%2F",
        ),  # uri_spec mixed (non-UTF-8 octets surface as surrogates)
    ],
)
def test_normalize_path(raw: str, merge: bool, expected: str) -> None:
    assert normalize_path(raw, merge) == expected


# path fixture rows (v0; under traditional_compatible v1 behaves as v0): service path, route path, strip, request, expected
PATH_ROWS = [
    ("/", "/", True, "/route/req", "/route/req", 5),
    ("/", "/route", True, "/route", "/", 9),
    ("/", "/route", True, "/routereq", "/req", 11),
    ("/", "/route/", True, "/route/req", "/req", 15),
    ("/srv", "/rou", False, "/roureq", "/srv/roureq", 16),
    ("/srv", "/rou", True, "/roureq", "/srv/req", 18),
    ("/srv/", "/rou", True, "/rou", "/srv", 21),
    ("/service", "/", False, "/route/", "/service/route/", 26),
    ("/service", "/route", True, "/route/", "/service/", 39),
    ("/service", "/route/", True, "/route/", "/service/", 46),
    ("/service/", "/route", True, "/route", "/service", 59),
    ("/service/", "/route/", False, "/route/req", "/service/route/req", 64),
    ("/service", None, True, "/route", "/service/route", 71),
    ("/service/", None, False, "/", "/service/", 75),
    ("/service", "/route", True, "/route./req", "/service/req", 78),
    ("/service", "/route", True, "/route%2E/req", "/service/req", 81),
]


# router_spec "#slash handling" runs every row with a plain path, and rows with a route path also as a regex.
PATH_CASES = [(*row, False) for row in PATH_ROWS] + [(*row, True) for row in PATH_ROWS if row[1] is not None]


@pytest.mark.parametrize(
    ("service_path", "route_path", "strip", "req", "expected", "row", "as_regex"), PATH_CASES
)
def test_upstream_path_v0(
    service_path: str, route_path: str | None, strip: bool, req: str, expected: str, row: int, as_regex: bool
) -> None:
    # router_spec "#slash handling": the same rows as a plain path and as the regex "~/[0]?<path>"
    paths = None if route_path is None else (("~/[0]?" + route_path[1:]) if as_regex else route_path,)
    route = RouteSpec(
        id=str(uuid.uuid4()),
        hosts=("localbin.com",),
        paths=paths,
        strip_path=strip,
        service_path=service_path,
    )
    found = match([route], Request("GET", req, host="localbin.com"))
    assert found is not None, f"path fixture row {row}"
    assert found.upstream_path == expected, f"path fixture row {row}"


def test_path_handling_v1_behaves_as_v0_under_traditional_compatible() -> None:
    # path fixture row 19 ("/srv", "/rou", strip, v1 → "/srvreq") runs only under `traditional`; atc.lua always
    # calls get_upstream_uri_v0.
    route = RouteSpec(id=ID.format(1), paths=("/rou",), path_handling="v1", service_path="/srv")
    found = match([route], Request("GET", "/roureq"))
    assert found is not None and found.upstream_path == "/srv/req"
    assert upstream_path("/srv", True, "/rou", "/roureq") == "/srv/req"


def test_regex_captures_and_strip_whole_match() -> None:
    # router_spec "returns uri_captures from a [uri regex]"; strip_path removes the text the regex matched.
    route = r(1, paths=[r"~/users/(?P<user_id>\d+)/profile"], service_path="/")
    found = match([route], Request("GET", "/users/123/profile/extra"))
    assert found is not None
    assert found.captures == {"1": "123", "user_id": "123"}
    assert found.matched_path == "/users/123/profile"
    assert found.upstream_path == "/extra"


def test_preserve_host_and_https_only_route() -> None:
    # router_spec "exec()" preserve_host sets upstream_host to the request Host; handler.lua answers
    # https_redirect_status_code for an https-only route matched over plain http.
    keep = r(1, paths=["/keep"], preserve_host=True)
    secure = r(2, paths=["/secure"], protocols=["https"], https_redirect_status_code=301)
    found = match([keep, secure], Request("GET", "/keep", host="example.com:8000"))
    assert found is not None and found.upstream_host == "example.com:8000"
    found = match([keep, secure], Request("GET", "/secure", host="example.com"))
    assert found is not None and found.https_redirect == 301
    found = match([keep, secure], Request("GET", "/secure", host="example.com", scheme="https"))
    assert found is not None and found.https_redirect is None


def test_sni_ignored_for_plain_http() -> None:
    # transform.lua: an SNI condition is `net.protocol != "https" || tls.sni ...` (Kong/kong#6425).
    found = match(WILDCARD_SNI, Request("GET", "/", host="any.test"))
    assert found is not None


def test_stream_routes_are_not_http_routes() -> None:
    assert (
        match([r(1, snis=["a.test"], protocols=["tls"])], Request("GET", "/", scheme="https", sni="a.test"))
        is None
    )


def test_no_route_response_is_kongs() -> None:
    # handler.lua: kong.response.error(404, "no Route matched with those values") with the default JSON template.
    status, headers, body = no_route_response("3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b")
    assert status == 404
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {
        "message": "no Route matched with those values",
        "request_id": "3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b",
    }


def test_from_kong_entity_dict() -> None:
    entity = {
        "id": ID.format(1),
        "name": "r1",
        "paths": ["/a"],
        "hosts": None,
        "headers": {"x-version": ["1", "~*^beta"]},
        "protocols": ["http", "https"],
        "strip_path": False,
        "service": {"id": "7d1b5d76-1b2c-4d4f-9a3e-2b1d6c2f0a11"},
        "created_at": 1700000000,
    }
    spec = RouteSpec.from_kong(entity, {"id": "7d1b5d76-1b2c-4d4f-9a3e-2b1d6c2f0a11", "path": "/api"})
    assert spec.headers == (("x-version", ("1", "~*^beta")),)
    assert spec.hosts is None and spec.strip_path is False and spec.regex_priority == 0
    assert spec.service_path == "/api"
    found = match([spec], Request("GET", "/a/b", headers={"X-Version": "Beta-2"}))
    assert found is not None and found.upstream_path == "/api/a/b"
