"""A large gateway route list as a prefix tree: Envoy finds a route among thousands without trying each in turn.

Envoy tries a virtual host's ``routes`` one by one; with 10,000 Kong routes a request for a route near the end
costs thousands of comparisons (a sixth of the throughput of a small configuration). A virtual host may instead
hold a ``matcher``: a prefix map on ``:path`` whose entries are route lists, each still tried in order. This
module turns a long route list into such a map, keeping what the list answers for every request:

- each route whose path specifier is a literal (``prefix``, exact ``path``, ``path_separated_prefix``, case
  sensitive) is indexed by that literal: any path it matches starts with it;
- the other routes (regular expressions, case-insensitive matches) are "unindexed";
- the map has one entry per literal K, listing, in the original order, the routes whose literal is a prefix of
  K (including K itself) and the unindexed routes. Envoy picks the longest literal K that starts the request's
  path; every route that can match that path has a literal starting it, hence a prefix of K, so the entry holds
  every route that could match, in the original order: the first that matches is the one the list would pick;
- ``on_no_match`` lists the unindexed routes, for paths no literal starts.

Lists stay short when literals rarely nest (a Kong route list ends with the ``/`` catch-all, in every entry).
When the map would hold many more routes than the list (many unindexed routes or deeply nested literals) the
list is kept as it is.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from xds.type.matcher.v3 import matcher_pb2

# below this many routes the list is kept (a few comparisons cost less than the map's lookup)
MIN_ROUTES = 64
# the map is used only when it holds at most this many route copies per route of the list (plus a constant)
MAX_COPIES_PER_ROUTE = 8
_EXTRA_COPIES = 1000


def _literal(route: route_components_pb2.Route) -> str | None:
    """The literal every path the route matches starts with, or None when there is none to index it by."""
    match = route.match
    if match.HasField("case_sensitive") and not match.case_sensitive.value:
        return None
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        value = match.prefix
    elif kind == "path":
        value = match.path
    elif kind == "path_separated_prefix":
        value = match.path_separated_prefix
    else:
        return None
    return value or None


def plan(literals: list[str | None]) -> tuple[dict[str, list[int]], list[int]] | None:
    """For routes with these literals (None: unindexed), the map's entries (literal -> route indexes in order) and
    the unindexed routes' indexes; None when the map would be too large."""
    unindexed = [i for i, lit in enumerate(literals) if lit is None]
    by_literal: dict[str, list[int]] = {}
    for i, lit in enumerate(literals):
        if lit is not None:
            by_literal.setdefault(lit, []).append(i)
    budget = MAX_COPIES_PER_ROUTE * len(literals) + _EXTRA_COPIES
    entries: dict[str, list[int]] = {}
    total = 0
    for key in by_literal:
        indexes = list(unindexed)
        for end in range(1, len(key) + 1):
            found = by_literal.get(key[:end])
            if found is not None:
                indexes += found
        indexes.sort()
        total += len(indexes)
        if total > budget:
            return None
        entries[key] = indexes
    return entries, unindexed


_ROUTE_LIST_URL = "type.googleapis.com/" + route_components_pb2.RouteList.DESCRIPTOR.full_name
_ROUTES_TAG = b"\x0a"  # RouteList.routes: field 1, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _route_list_bytes(encoded: list[bytes], indexes: list[int]) -> bytes:
    """A serialised RouteList of the routes at ``indexes`` (each route serialised once for every entry that
    lists it, instead of copying the messages into a RouteList per entry)."""
    return b"".join(encoded[i] for i in indexes)


def index_routes(vhost: route_components_pb2.VirtualHost) -> bool:
    """Move a long ``vhost.routes`` into ``vhost.matcher`` (see the module's docstring); True when it did."""
    if len(vhost.routes) < MIN_ROUTES:
        return False
    routes = list(vhost.routes)
    planned = plan([_literal(r) for r in routes])
    if planned is None:
        return False
    entries, unindexed = planned
    # each route as a RouteList element (tag, length, bytes), serialised once
    encoded = [
        _ROUTES_TAG + _varint(len(data)) + data
        for data in (r.SerializeToString(deterministic=True) for r in routes)
    ]
    matcher = matcher_pb2.Matcher()
    tree = matcher.matcher_tree
    tree.input.name = "request-path"
    tree.input.typed_config.Pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":path"))
    table = tree.prefix_match_map.map
    for key, indexes in entries.items():
        on_match = table[key]
        on_match.action.name = "routes"
        on_match.action.typed_config.type_url = _ROUTE_LIST_URL
        on_match.action.typed_config.value = _route_list_bytes(encoded, indexes)
    if unindexed:
        matcher.on_no_match.action.name = "routes"
        matcher.on_no_match.action.typed_config.type_url = _ROUTE_LIST_URL
        matcher.on_no_match.action.typed_config.value = _route_list_bytes(encoded, unindexed)
    del vhost.routes[:]
    vhost.matcher.CopyFrom(matcher)
    return True
