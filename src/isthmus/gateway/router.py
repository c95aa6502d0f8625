"""Kong's HTTP router as Kong 3.x runs it under ``router_flavor = traditional_compatible`` (the default).

Facts taken from Kong 3.10's code and router spec (``kong/router/transform.lua``, ``atc.lua``, ``fields.lua``,
``utils.lua``, ``kong/tools/uri.lua``, ``spec/01-unit/08-router_spec.lua``,
``spec/fixtures/router_path_handling_tests.lua``) and the ATC router it feeds (``Kong/atc-router``):

* **Order.** Every route gets a priority; routes are tried highest first and the first whose every configured
  field matches wins. The priority compares, most significant first: the number of configured fields among
  methods, hosts, headers, snis, paths (``sources``/``destinations`` are stream-only here); whether the route has
  hosts and none of them is a wildcard; the number of header names; whether the paths are regexes; the
  ``regex_priority`` (regex routes only); the byte length of the prefix paths. Equal priorities are ordered by
  the matcher's UUID, the greater first (the ATC router keys matchers by ``(priority, uuid)`` and walks them in
  reverse). ``created_at`` plays no part in this flavor (it only does under ``traditional``).
* **Split routes.** A route whose paths mix regexes and prefixes of different lengths becomes one matcher per
  group (all regexes; each prefix length), in order of first appearance; every group after a split gets the
  UUID v5 of ``"<route id>#<group index>"`` in Kong's namespace, so its tie-break position is Kong's.
* **Fields.** Prefix paths are ``starts with``; ``~`` paths are regexes anchored at the start only (RE2 here, as
  Envoy runs them). Hosts compare exactly, ``*.x`` as a suffix ``.x`` and ``x.*`` as a prefix ``x.``; a host with
  a port also requires that port (the Host header's port, else the listener's). Headers compare lower-cased (names
  with ``-`` and ``_`` alike), any request value may match, a ``~*`` value is a regex searched in the lower-cased
  value (the pattern itself is lower-cased too, as Kong does). Methods compare exactly. SNIs only count for
  ``https`` requests (``*.x`` / ``x.*`` as for hosts; a trailing dot is ignored). ``protocols`` are not matched:
  a route that allows ``https`` but not ``http`` matched by a plain request answers ``https_redirect_status_code``.
* **Normalisation.** The query is dropped, percent-encoded octets that are not reserved characters are decoded
  (reserved ones keep their escape, upper-cased hex), ``.``/``..`` segments are removed and runs of ``/`` merged.
  Configured route paths are never normalised.
* **Upstream path.** Kong's ``v0`` joining of the service path and the request path (after stripping the matched
  prefix, or the whole regex match, when ``strip_path``). Under ``traditional_compatible`` the router always uses
  ``v0``: a route's ``path_handling = "v1"`` is accepted and kept but behaves as ``v0`` (Kong's router spec runs the
  ``v1`` rows of its table only for the ``traditional`` flavor).

Known difference: Kong packs the priority into one 64-bit integer; this module compares the same fields as a
tuple, so a negative ``regex_priority`` orders below 0 (as Kong's docs describe) rather than by its bit pattern.

**Envoy.** Envoy evaluates a virtual host's routes in order and picks the first match, so ``sort_routes`` is the
order of the generated ``RouteConfiguration``'s routes. Envoy's virtual-host selection by domain has its own
precedence (exact, then longest suffix wildcard, then prefix wildcard, then ``*``) which is not Kong's (hosts are
only one field of Kong's priority, and a host-less route can beat a wildcard-host route with more fields), so the
plan is one catch-all virtual host (``domains: ["*"]``) whose routes are the sorted matchers, each carrying its hosts
as ``:authority`` header matchers (exact / suffix / prefix, port-aware), its paths as ``prefix`` or ``safe_regex``
(``^`` anchored and ``.*`` appended since Envoy's regex must match the whole path), its methods, headers and SNI
conditions as header matchers. Caveats: Envoy matches the path before its own normalisation only if
``normalize_path``/``merge_slashes`` are set on the HCM (they should be, to match Kong); header regexes in Envoy are
full-match and case-sensitive (emit ``(?i).*<re>.*``); SNI needs a filter-state or ``:scheme``-guarded matcher.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from isthmus.policies.regex import RegexError, compile_regex

HTTP_PROTOCOLS = frozenset({"http", "https", "grpc", "grpcs"})
MAX_HEADER_COUNT = 255
# Kong's namespace for the UUID v5 of split routes (``kong/router/transform.lua``).
SPLIT_ROUTE_NAMESPACE = uuid.UUID("7f145bf9-0dce-4f91-98eb-debbce4b9f6b")
NO_ROUTE_STATUS = 404
NO_ROUTE_MESSAGE = "no Route matched with those values"


@dataclass(frozen=True)
class RouteSpec:
    """The fields of a Kong Route the router reads (an entity dict becomes one with :meth:`from_kong`).

    ``None`` means "not configured"; an empty tuple for ``hosts`` is "configured, empty" (Kong treats the two
    alike for matching, but an empty ``hosts`` array still counts as plain hosts in its priority)."""

    id: str
    name: str | None = None
    hosts: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    headers: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    snis: tuple[str, ...] | None = None
    protocols: tuple[str, ...] = ("http", "https")
    regex_priority: int = 0
    strip_path: bool = True
    preserve_host: bool = False
    path_handling: str = "v0"
    https_redirect_status_code: int = 426
    created_at: int = 0
    service_id: str | None = None
    # The path of the route's Service ("/" when the Service has none); None without a Service.
    service_path: str | None = None

    @classmethod
    def from_kong(cls, route: Mapping[str, Any], service: Mapping[str, Any] | None = None) -> RouteSpec:
        """Build from a Kong Route entity dict (Admin API / declarative shape) and, optionally, its Service's.

        Missing or null fields take Kong's defaults; ``headers`` is Kong's map of name → list of values."""

        def strings(key: str) -> tuple[str, ...] | None:
            value = route.get(key)
            return None if value is None else tuple(str(item) for item in value)

        raw_headers = route.get("headers")
        headers = (
            None
            if raw_headers is None
            else tuple((str(name), tuple(str(v) for v in values)) for name, values in raw_headers.items())
        )
        service_ref = route.get("service")
        service_id = service_ref.get("id") if isinstance(service_ref, Mapping) else None
        service_path: str | None = None
        if service is not None:
            service_id = service.get("id", service_id)
            service_path = service.get("path") or "/"

        def pick(key: str, default: Any) -> Any:
            value = route.get(key)
            return default if value is None else value

        return cls(
            id=str(route["id"]),
            name=route.get("name"),
            hosts=strings("hosts"),
            paths=strings("paths"),
            methods=strings("methods"),
            headers=headers,
            snis=strings("snis"),
            protocols=tuple(pick("protocols", ("http", "https"))),
            regex_priority=int(pick("regex_priority", 0)),
            strip_path=bool(pick("strip_path", True)),
            preserve_host=bool(pick("preserve_host", False)),
            path_handling=str(pick("path_handling", "v0")),
            https_redirect_status_code=int(pick("https_redirect_status_code", 426)),
            created_at=int(pick("created_at", 0)),
            service_id=None if service_id is None else str(service_id),
            service_path=service_path,
        )


Priority = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class RouteEntry:
    """One matcher in evaluation order: a route, or one path group of a split route."""

    route: RouteSpec
    matcher_id: str
    paths: tuple[str, ...] | None
    priority: Priority


@dataclass(frozen=True)
class Request:
    """What the router sees of a request. ``path`` is the raw request target (query allowed); ``port`` is the
    listener's port, used for port-specific hosts when the Host header carries none."""

    method: str
    path: str
    host: str = ""
    headers: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    sni: str | None = None
    scheme: str = "http"
    port: int | None = None


@dataclass(frozen=True)
class Match:
    route: RouteSpec
    matcher_id: str
    normalized_path: str
    # The configured prefix that matched, or the text the regex matched; None when the route has no paths.
    matched_path: str | None
    captures: Mapping[str, str]
    upstream_path: str
    # The Host header to send upstream when preserve_host; None means the Service's host.
    upstream_host: str | None
    # The status to answer instead of proxying (route is https-only and the request is not), or None.
    https_redirect: int | None


def _non_empty(value: Sequence[Any] | None) -> bool:
    return value is not None and len(value) > 0


def _is_regex(path: str) -> bool:
    return path.startswith("~")


def _priority(route: RouteSpec, paths: tuple[str, ...] | None) -> Priority:
    weight = sum(
        1 for present in (route.methods, route.hosts, route.headers, route.snis, paths) if _non_empty(present)
    )
    plain_hosts = route.hosts is not None and not any("*" in host for host in route.hosts)
    header_count = min(len(route.headers), MAX_HEADER_COUNT) if route.headers else 0
    regex = paths is not None and len(paths) > 0 and _is_regex(paths[0])
    length = 0 if regex or not paths else len(paths[0].encode()) & 0x7FFFF
    return (weight, int(plain_hosts), header_count, int(regex), route.regex_priority if regex else 0, length)


def _path_groups(paths: tuple[str, ...]) -> list[tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for path in paths:
        groups.setdefault(0 if _is_regex(path) else len(path.encode()), []).append(path)
    return [tuple(group) for group in groups.values()]


def _entries(route: RouteSpec) -> list[RouteEntry]:
    if not route.paths or len(route.paths) == 1:
        return [RouteEntry(route, route.id, route.paths or None, _priority(route, route.paths or None))]
    groups = _path_groups(route.paths)
    if len(groups) == 1:
        return [RouteEntry(route, route.id, route.paths, _priority(route, route.paths))]
    return [
        RouteEntry(
            route,
            str(uuid.uuid5(SPLIT_ROUTE_NAMESPACE, f"{route.id}#{index}")),
            group,
            _priority(route, group),
        )
        for index, group in enumerate(groups, start=1)
    ]


def _uuid_key(value: str) -> bytes:
    try:
        return uuid.UUID(value).bytes
    except ValueError:
        return value.encode()


def is_http_route(route: RouteSpec) -> bool:
    """Whether the route belongs to the HTTP router (Kong's stream routes are routed elsewhere)."""
    return bool(route.protocols) and route.protocols[0] in HTTP_PROTOCOLS


SortKey = tuple[Priority, bytes]


def keyed_entries(route: RouteSpec) -> list[tuple[SortKey, RouteEntry]]:
    """A route's matchers with their sort keys (none for a route outside the HTTP router): sorting the keyed
    entries of every route, greatest key first, gives :func:`sort_routes`' order (callers may keep them per route)."""
    if not is_http_route(route):
        return []
    return [((e.priority, _uuid_key(e.matcher_id)), e) for e in _entries(route)]


def sort_routes(routes: Iterable[RouteSpec]) -> list[RouteEntry]:
    """The HTTP routes' matchers in Kong's evaluation order (priority, then matcher UUID, greatest first)."""
    keyed = [item for route in routes for item in keyed_entries(route)]
    keyed.sort(key=lambda item: item[0], reverse=True)
    return [entry for _, entry in keyed]


# --- normalisation (kong/tools/uri.lua) -------------------------------------------------------------------------

_RESERVED = frozenset(b"!*'();:@&=+$,/?%#[]")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _decode_unreserved(m: re.Match[bytes]) -> bytes:
    octet = int(m.group(1), 16)
    return m.group(0).upper() if octet in _RESERVED else bytes([octet])


def normalize_path(path: str, merge_slashes: bool = True) -> str:
    """Kong's request path normalisation: percent-decoding of non-reserved octets, dot-segment removal and (by
    default, as the router does) merging of repeated slashes. Octets that are not UTF-8 come back as surrogates."""
    raw = path.encode("utf-8", "surrogateescape")
    if raw in (b"", b"/"):
        return path
    if b"%" in raw:
        raw = _PERCENT.sub(_decode_unreserved, raw)
    if b"." not in raw and (not merge_slashes or b"//" not in raw):
        return raw.decode("utf-8", "surrogateescape")
    out: list[bytes] = []
    rest = raw
    while rest:
        if rest == b"/.":
            rest = b"/"
        elif rest == b"/..":
            rest = b"/"
            if out:
                out.pop()
        elif rest in (b".", b".."):
            rest = b""
        elif rest.startswith(b"../"):
            rest = rest[3:]
        elif rest.startswith(b"./"):
            rest = rest[2:]
        elif rest.startswith(b"/./"):
            rest = rest[2:]
        elif rest.startswith(b"/../"):
            rest = rest[3:]
            if out:
                out.pop()
        elif merge_slashes and rest.startswith(b"//"):
            rest = rest[1:]
        else:
            cut = rest.find(b"/", 1)
            if cut < 0:
                out.append(rest)
                rest = b""
            else:
                out.append(rest[:cut])
                rest = rest[cut:]
    return b"".join(out).decode("utf-8", "surrogateescape")


def request_path(target: str) -> str:
    """The path the router matches: the request target without its query, normalised."""
    cut = target.find("?", 1)
    return normalize_path(target if cut < 0 else target[:cut])


# --- field matchers ---------------------------------------------------------------------------------------------


def split_host_port(value: str) -> tuple[str, int | None]:
    """``host:port`` → (host, port) at the first colon when what follows is a number, else (value, None)."""
    cut = value.find(":")
    if cut < 0:
        return value, None
    port = value[cut + 1 :]
    if not port.isdigit():
        return value, None
    return value[:cut], int(port)


def _host_matches(pattern: str, host: str, port: int | None) -> bool:
    name, want_port = split_host_port(pattern.lower())
    if want_port is not None and port != want_port:
        return False
    if name.startswith("*"):
        return host.endswith(name[1:])
    if name.endswith("*"):
        return host.startswith(name[:-1])
    return host == name


def _sni_matches(pattern: str, sni: str) -> bool:
    if pattern.startswith("*"):
        suffix = pattern[:-1] if len(pattern) > 1 and pattern.endswith(".") else pattern
        return sni.endswith(suffix[1:])
    if pattern.endswith("*"):
        return sni.startswith(pattern[:-1])
    exact = pattern[:-1] if len(pattern) > 1 and pattern.endswith(".") else pattern
    return sni == exact


def _header_key(name: str) -> str:
    return name.lower().replace("-", "_")


def _request_headers(headers: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        values = [value] if isinstance(value, str) else list(value)
        out.setdefault(_header_key(name), []).extend(v.lower() for v in values)
    return out


def _search(pattern: str, text: str) -> Any:
    try:
        return compile_regex(pattern).search(text)
    except RegexError:
        return None  # a pattern Envoy refuses cannot be in a configuration Envoy runs


def _header_matches(wanted: tuple[str, ...], values: list[str]) -> bool:
    for option in wanted:
        if option.startswith("~*"):
            pattern = option[2:].lower()
            if any(_search(pattern, value) is not None for value in values):
                return True
        elif option.lower() in values:
            return True
    return False


def _path_match(paths: tuple[str, ...], path: str) -> tuple[str, dict[str, str]] | None:
    for configured in paths:
        if _is_regex(configured):
            found = _search("^" + configured[1:], path)
            if found is not None:
                captures = {str(i): g for i, g in enumerate(found.groups(), start=1) if g is not None}
                captures.update({k: v for k, v in found.groupdict().items() if v is not None})
                return str(found.group(0)), captures
        elif path.startswith(configured):
            return configured, {}
    return None


# --- upstream path (kong/router/utils.lua get_upstream_uri_v0) -------------------------------------------------


def _sanitize_postfix(postfix: str) -> str:
    if postfix in (".", ".."):
        return ""
    if postfix.startswith("./"):
        return postfix[2:]
    if postfix.startswith("../"):
        return postfix[3:]
    return postfix


def upstream_path(
    service_path: str | None, strip_path: bool, matched_prefix: str | None, req_path: str
) -> str:
    """The path Kong sends upstream (``v0``) for a normalised request path; ``matched_prefix`` is the matched
    route path or regex text (None when the route matched without paths)."""
    base = service_path or "/"
    prefix = matched_prefix if strip_path and matched_prefix is not None else "/"
    postfix = _sanitize_postfix(req_path[len(prefix) :])
    if base.endswith("/"):
        if not strip_path:
            return base + req_path[1:]
        if postfix == "":
            if base == "/":
                return "/"
            return base if req_path.endswith("/") else base[:-1]
        return base[:-1] + postfix if postfix.startswith("/") else base + postfix
    if strip_path:
        if postfix == "":
            return base + "/" if len(req_path) > 1 and req_path.endswith("/") else base
        return base + postfix if postfix.startswith("/") else base + "/" + postfix
    return base if req_path == "/" else base + req_path


# --- matching ---------------------------------------------------------------------------------------------------


def _entry_matches(
    entry: RouteEntry, request: Request, path: str, host: str, port: int | None, headers: dict[str, list[str]]
) -> tuple[str | None, dict[str, str]] | None:
    route = entry.route
    if route.snis and request.scheme == "https":
        if request.sni is None or not any(_sni_matches(s, request.sni) for s in route.snis):
            return None
    if route.methods and request.method not in route.methods:
        return None
    if route.hosts and not any(_host_matches(h, host, port) for h in route.hosts):
        return None
    matched: tuple[str | None, dict[str, str]] = (None, {})
    if entry.paths:
        found = _path_match(entry.paths, path)
        if found is None:
            return None
        matched = found
    for name, wanted in route.headers or ():
        values = headers.get(_header_key(name))
        if not values or not _header_matches(wanted, values):
            return None
    return matched


def match_sorted(entries: Sequence[RouteEntry], request: Request) -> Match | None:
    """The first of ``entries`` (from :func:`sort_routes`) that matches ``request``, or None (Kong's 404)."""
    path = request_path(request.path)
    host, host_port = split_host_port(request.host.lower())  # nginx's $host is lower-cased
    port = host_port if host_port is not None else request.port
    headers = _request_headers(request.headers)
    for entry in entries:
        found = _entry_matches(entry, request, path, host, port, headers)
        if found is None:
            continue
        matched_path, captures = found
        route = entry.route
        redirect = None
        if "https" in route.protocols and "http" not in route.protocols and request.scheme != "https":
            redirect = route.https_redirect_status_code
        return Match(
            route=route,
            matcher_id=entry.matcher_id,
            normalized_path=path,
            matched_path=matched_path,
            captures=captures,
            upstream_path=upstream_path(route.service_path, route.strip_path, matched_path, path),
            upstream_host=request.host if route.preserve_host else None,
            https_redirect=redirect,
        )
    return None


def match(routes: Iterable[RouteSpec], request: Request) -> Match | None:
    """Kong's route for ``request`` among ``routes``, or None when Kong would answer :func:`no_route_response`."""
    return match_sorted(sort_routes(routes), request)


def no_route_body(request_id: str) -> str:
    """Kong 3.x's JSON 404 body when no route matches (its default JSON error template, with the request id)."""
    return '{\n  "message":"' + NO_ROUTE_MESSAGE + '",\n  "request_id":"' + request_id + '"\n}'


def no_route_response(request_id: str) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of Kong's answer when no route matches."""
    return NO_ROUTE_STATUS, {"Content-Type": "application/json; charset=utf-8"}, no_route_body(request_id)
