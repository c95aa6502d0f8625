"""The prefix map of a long gateway route list picks, for every path, the route the list would pick."""

from __future__ import annotations

import re

from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format
from xds.type.matcher.v3 import matcher_pb2

from isthmus.gateway import route_index


def _route(name: str, match: dict[str, object]) -> route_components_pb2.Route:
    return json_format.ParseDict(
        {"name": name, "match": match, "direct_response": {"status": 200}}, route_components_pb2.Route()
    )


def _matches(route: route_components_pb2.Route, path: str) -> bool:
    """Envoy's path specifiers: prefix on the whole :path, exact path and regex without the query."""
    m = route.match
    bare = path.split("?", 1)[0]
    kind = m.WhichOneof("path_specifier")
    insensitive = m.HasField("case_sensitive") and not m.case_sensitive.value
    if kind == "prefix":
        return path.lower().startswith(m.prefix.lower()) if insensitive else path.startswith(m.prefix)
    if kind == "path":
        exact = str(m.path)
        return bare.lower() == exact.lower() if insensitive else bare == exact
    if kind == "path_separated_prefix":
        prefix = str(m.path_separated_prefix)
        return bare == prefix or bare.startswith(prefix + "/")
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, bare) is not None
    raise AssertionError(kind)


def _first(routes: list[route_components_pb2.Route], path: str) -> str | None:
    return next((r.name for r in routes if _matches(r, path)), None)


def _unpack(any_action: object) -> list[route_components_pb2.Route]:
    out = route_components_pb2.RouteList()
    assert any_action.typed_config.Unpack(out)  # type: ignore[attr-defined]
    return list(out.routes)


def _pick(matcher: matcher_pb2.Matcher, path: str) -> str | None:
    """Envoy's prefix map: the longest key starting the path, else on_no_match; then the list in order."""
    table = matcher.matcher_tree.prefix_match_map.map
    keys = [k for k in table if path.startswith(k)]
    if keys:
        return _first(_unpack(table[max(keys, key=len)].action), path)
    if matcher.HasField("on_no_match"):
        return _first(_unpack(matcher.on_no_match.action), path)
    return None


def _routes() -> list[route_components_pb2.Route]:
    routes = [_route("regex", {"safe_regex": {"regex": "/items/[0-9]+"}})]
    routes.append(_route("exact", {"path": "/s1/r1"}))
    routes.append(_route("insensitive", {"prefix": "/CASE", "case_sensitive": False}))
    for s in range(10):
        for r in range(10):
            routes.append(_route(f"s{s}r{r}", {"prefix": f"/s{s}/r{r}"}))
        routes.append(_route(f"s{s}", {"prefix": f"/s{s}"}))
    routes.append(_route("nested-after", {"prefix": "/s3/r3/deeper"}))  # shadowed by s3r3, as in the list
    routes.append(_route("sep", {"path_separated_prefix": "/sep"}))
    routes.append(_route("no route", {"prefix": "/"}))
    return routes


def test_the_map_picks_what_the_list_picks() -> None:
    routes = _routes()
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"], routes=routes)
    assert route_index.index_routes(vhost)
    assert not vhost.routes and vhost.HasField("matcher")
    paths = ["/", "/x", "/s1/r1", "/s1/r1?q=1", "/s1/r1x", "/s1/r10", "/s3/r3/deeper", "/s3", "/s3/", "/s9/r9/z",
             "/items/12", "/items/12/x", "/items/x", "/case/a", "/CASE", "/sep", "/sep/a", "/s", "/s1/r"]  # fmt: skip
    for path in paths:
        assert _pick(vhost.matcher, path) == _first(routes, path), path


def test_short_lists_and_unbounded_maps_stay_lists() -> None:
    short = route_components_pb2.VirtualHost(routes=_routes()[:10])
    assert not route_index.index_routes(short) and len(short.routes) == 10
    regexes = [_route(f"re{i}", {"safe_regex": {"regex": f"/re{i}/.*"}}) for i in range(200)]
    prefixes = [_route(f"p{i}", {"prefix": f"/p{i}"}) for i in range(200)]
    many = route_components_pb2.VirtualHost(routes=regexes + prefixes)
    assert not route_index.index_routes(many) and len(many.routes) == 400


def test_plan_lists_ancestors_and_unindexed_in_order() -> None:
    entries, unindexed = route_index.plan(["/a", None, "/ab", "/", "/abc"]) or ({}, [])
    assert unindexed == [1]
    assert entries == {"/a": [0, 1, 3], "/ab": [0, 1, 2, 3], "/": [1, 3], "/abc": [0, 1, 2, 3, 4]}
