"""The RouteConfiguration of a gateway: Kong's routes in its router's order as Envoy routes (pure; no I/O).

See :mod:`isthmus.gateway.translate` for what is generated and the known differences with Kong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import partial
from operator import itemgetter
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2, json_format

from isthmus.gateway import mesh_leg
from isthmus.gateway import plugins as kong_plugins
from isthmus.gateway.plugins.auth.routes import consumer_copies
from isthmus.gateway.route_index import index_routes
from isthmus.gateway.router import (
    NO_ROUTE_MESSAGE,
    RouteEntry,
    RouteSpec,
    SortKey,
    keyed_entries,
    upstream_path,
)
from isthmus.policies.regex import RegexError, compile_regex

NO_SERVICE_MESSAGE = "no Service found with those values"
# set by the auth filter once a consumer is identified (hash_on: consumer)
CONSUMER_ID_HEADER = "x-consumer-id"
# The request's path as the router matched it, copied by the route before its path rewrite (Envoy hashes after the
# rewrite) for ``hash_on: uri_capture``; the Upstream's cluster removes it before the upstream sees it.
HASH_PATH_HEADER = "x-isthmus-hash-path"
HTTPS_REQUIRED_MESSAGE = "Please use HTTPS protocol"
_JSON = "application/json; charset=utf-8"
_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}  # fmt: skip


def route_config_name(workspace: str, https: bool = False, port: int | None = None) -> str:
    """``kong:<ws>`` (``:https`` for the TLS listeners; ``:<port>`` when some route host names a port, since Kong
    then compares it with the listener's port)."""
    name = f"kong:{workspace}:https" if https else f"kong:{workspace}"
    return name if port is None else f"{name}:{port}"


def cluster_name(workspace: str, service_id: str) -> str:
    return f"kong:{workspace}:service:{service_id}"


def json_body(message: str) -> str:
    return json.dumps({"message": message}, indent=2) + "\n"


def seconds(value: Any, default: int) -> str:
    ms = int(value) if isinstance(value, int) and value >= 0 else default
    return f"{ms / 1000:.3f}s"


# -- routes ------------------------------------------------------------------------------------------------------


def _host_regex(hosts: Sequence[str], listener_port: int | None = None) -> str:
    """A host without a port accepts any port; ``host:port`` requires that port in the Host header, or no port
    there when the listener's is that port."""
    options = []
    for pattern in hosts:
        name, sep, port = pattern.partition(":")
        if sep and not port.isdigit():
            name, port = pattern, ""
        if name.startswith("*"):
            body = ".*" + re.escape(name[1:])
        elif name.endswith("*"):
            body = re.escape(name[:-1]) + ".*"
        else:
            body = re.escape(name)
        if not port:
            options.append(body + "(?::[0-9]+)?")
        elif listener_port is not None and int(port) == listener_port:
            options.append(body + "(?::" + port + ")?")
        else:
            options.append(body + ":" + port)
    return "(?i)(?:" + "|".join(options) + ")"


def has_port(host: str) -> bool:
    name, sep, port = host.rpartition(":")
    return bool(sep and name and port.isdigit())


def _header_value_regex(values: Sequence[str]) -> str:
    options = [f".*(?:{v[2:].lower()}).*" if v.startswith("~*") else re.escape(v) for v in values]
    return "(?i)(?:" + "|".join(options) + ")"


def _regex(pattern: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": pattern}}


# The filter-state key that the TLS listeners' ``set_filter_state`` network filter fills with the connection's SNI
# (``%REQUESTED_SERVER_NAME%``, absent without SNI); routes with ``snis`` match it on the https RouteConfiguration.
SNI_FILTER_STATE = "isthmus.gateway.sni"


def sni_regex(snis: Sequence[str]) -> str:
    """Kong's SNI comparison: exact (a trailing dot ignored), ``*.x`` as a suffix, ``x.*`` as a prefix."""
    options = []
    for pattern in snis:
        if pattern.startswith("*"):
            options.append(".*" + re.escape(pattern[1:].rstrip(".")))
        elif pattern.endswith("*"):
            options.append(re.escape(pattern[:-1]) + ".*")
        else:
            options.append(re.escape(pattern[:-1] if len(pattern) > 1 and pattern.endswith(".") else pattern))
    return "(?i)(?:" + "|".join(options) + ")"


def _sni_match(spec: RouteSpec, https: bool) -> dict[str, Any]:
    """SNIs only count for https requests (Kong's router skips them for plain HTTP)."""
    if not https or not spec.snis:
        return {}
    return {"filter_state": [{"key": SNI_FILTER_STATE, "string_match": _regex(sni_regex(spec.snis))}]}


def _headers(spec: RouteSpec, port: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if spec.hosts:
        out.append({"name": ":authority", "string_match": _regex(_host_regex(spec.hosts, port))})
    if spec.methods:
        out.append({"name": ":method", "string_match": _regex("|".join(re.escape(m) for m in spec.methods))})
    for name, values in spec.headers or ():
        if values:
            out.append({"name": name.lower(), "string_match": _regex(_header_value_regex(values))})
    return out


def _exact_result(base: str, prefix: str) -> str:
    """Kong's upstream path when the request path is exactly the stripped ``prefix``."""
    return upstream_path(base, True, prefix, prefix)


def _rewrites(spec: RouteSpec, path: str | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(extra match fields, route action fields) pairs, most specific first, for one path of a matcher."""
    base = spec.service_path or "/"
    if not spec.strip_path or path is None:
        if base == "/":
            return [({}, {})]
        if base.endswith("/"):
            return [({}, {"regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": base}})]
        rest: tuple[dict[str, Any], dict[str, Any]] = (
            {},
            {"regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": base + "/"}},
        )
        if path is not None and path != "/":  # the route cannot match "/" itself
            return [rest]
        return [({"path": "/"}, {"regex_rewrite": {"pattern": {"regex": "^/$"}, "substitution": base}}), rest]
    after = base if base.endswith("/") else base + "/"
    if path.startswith("~"):
        exact_match: dict[str, Any] = {"safe_regex": {"regex": path[1:]}}
        exact = _exact_result(base, "/x")  # a regex's text never "ends with /" for this purpose
        pattern = "^(?:" + path[1:] + ")/?"
    else:
        exact_match = {"path": path}
        exact = _exact_result(base, path)
        pattern = "^" + re.escape(path) + "/?"
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if exact != after:
        out.append((exact_match, {"regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": exact}}))
    out.append(({}, {"regex_rewrite": {"pattern": {"regex": pattern}, "substitution": after}}))
    return out


def _path_match(path: str | None) -> dict[str, Any]:
    if path is None:
        return {"prefix": "/"}
    if path.startswith("~"):
        return {"safe_regex": {"regex": "(?:" + path[1:] + ").*"}}
    return {"prefix": path}


MESH_DOMAIN = ".mesh"


def mesh_service(service: Mapping[str, Any]) -> str | None:
    """The mesh service a Kong Service reaches (host ``<kuma.io/service>.mesh``, as Kuma's DNS names them), or None.
    Its traffic goes to the mesh's cluster of that name, which the mesh reconciler builds from the gateway
    Dataplane's ``networking.outbound`` entry for the service: mTLS with the gateway's identity, the mesh's
    policies for that outbound."""
    host = str(service.get("host") or "")
    if host.endswith(MESH_DOMAIN) and len(host) > len(MESH_DOMAIN):
        return host[: -len(MESH_DOMAIN)]
    return None


def _host_rewrite(service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    host = str(service.get("host") or "")
    upstream = upstreams.get(host)
    if upstream is not None:
        if upstream.get("host_header"):
            return {"host_rewrite_literal": str(upstream["host_header"])}
        return {"auto_host_rewrite": True}
    port = service.get("port")
    default = 443 if service.get("protocol") in ("https", "grpcs") else 80
    return {"host_rewrite_literal": host if port in (None, default) else f"{host}:{port}"}


def _capture_rewrite(path: str | None, capture: str) -> dict[str, Any] | None:
    """A ``regex_rewrite`` of ``:path`` that leaves the route regex's capture ``capture`` (a name or a number, as
    Kong's ``uri_captures``), or None when the route's path is not a regex with that capture."""
    if path is None or not path.startswith("~"):
        return None
    try:
        compiled = compile_regex(path[1:])
    except RegexError:
        return None
    index = int(capture) if capture.isdigit() else compiled.groupindex.get(capture)
    if not isinstance(index, int) or not 0 < index <= compiled.groups:
        return None
    return {"pattern": {"regex": "^(?:" + path[1:] + ").*$"}, "substitution": f"\\{index}"}


def uses_uri_capture(upstream: Mapping[str, Any] | None) -> bool:
    return (
        upstream is not None
        and upstream.get("algorithm") == "consistent-hashing"
        and "uri_capture" in (upstream.get("hash_on"), upstream.get("hash_fallback"))
    )


def _hash_policy(upstream: Mapping[str, Any] | None, path: str | None = None) -> list[dict[str, Any]]:
    """Envoy's hash policies for an Upstream's ``hash_on`` then ``hash_fallback``: the first is ``terminal``, so
    Envoy hashes on it alone when the request has its input and on the fallback otherwise, as Kong does.
    ``consumer`` hashes on ``x-consumer-id`` (set by the auth filter), ``uri_capture`` on a capture of the
    matched route's regex path (``path``, one Envoy route per path)."""
    if upstream is None or upstream.get("algorithm") != "consistent-hashing":
        return []
    out: list[dict[str, Any]] = []
    for prefix in ("hash_on", "hash_fallback"):
        kind = upstream.get(prefix)
        policy: dict[str, Any] | None = None
        if kind == "consumer":
            policy = {"header": {"header_name": CONSUMER_ID_HEADER}}
        elif kind == "ip":
            policy = {"connection_properties": {"source_ip": True}}
        elif kind == "header" and upstream.get(f"{prefix}_header"):
            policy = {"header": {"header_name": str(upstream[f"{prefix}_header"]).lower()}}
        elif kind == "cookie" and upstream.get("hash_on_cookie"):
            # a missing cookie is generated (a session cookie on hash_on_cookie_path), as Kong does
            cookie = {
                "name": upstream["hash_on_cookie"],
                "ttl": "0s",
                "path": upstream.get("hash_on_cookie_path") or "/",
            }
            policy = {"cookie": cookie}
        elif kind == "path":
            # Kong hashes the path without its query
            policy = {"header": {"header_name": ":path", "regex_rewrite": {"pattern": {"regex": "\\?.*$"}, "substitution": ""}}}  # fmt: skip
        elif kind == "query_arg" and upstream.get(f"{prefix}_query_arg"):
            policy = {"query_parameter": {"name": upstream[f"{prefix}_query_arg"]}}
        elif kind == "uri_capture" and upstream.get(f"{prefix}_uri_capture"):
            rewrite = _capture_rewrite(path, str(upstream[f"{prefix}_uri_capture"]))
            if rewrite is not None:
                policy = {"header": {"header_name": HASH_PATH_HEADER, "regex_rewrite": rewrite}}
        if policy is not None:
            out.append(policy)
    if len(out) > 1:
        out[0]["terminal"] = True
    return out


def _envoy_routes(
    workspace: str,
    entry: RouteEntry,
    services: Mapping[str, Mapping[str, Any]],
    upstreams: Mapping[str, Mapping[str, Any]],
    https: bool = False,
    port: int | None = None,
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The Envoy routes of one Kong matcher; ``plugins`` (:func:`isthmus.gateway.plugins.effective`) apply to them
    all but an https redirect, which Kong answers before its plugins run."""
    spec = entry.route
    headers = _headers(spec, port)
    out: list[dict[str, Any]] = []
    for path in entry.paths or (None,):
        name = f"{spec.name or spec.id}" + (f" {path}" if path else "")
        match = {**_path_match(path), **({"headers": headers} if headers else {}), **_sni_match(spec, https)}
        if not https and "https" in spec.protocols and "http" not in spec.protocols:
            code = spec.https_redirect_status_code
            if code in _REDIRECT_CODES:
                out.append({"name": name, "match": match, "redirect": {"https_redirect": True, "response_code": _REDIRECT_CODES[code]}})  # fmt: skip
            else:
                out.append(_direct(name, match, code, HTTPS_REQUIRED_MESSAGE))
            continue
        service = services.get(spec.service_id or "")
        if service is None:
            identity = _identity(workspace, spec, None)
            out += kong_plugins.apply(
                plugins or {}, [_direct(name, match, 503, NO_SERVICE_MESSAGE)], identity
            )
            continue
        action: dict[str, Any] = {
            "cluster": mesh_leg.cluster_for(workspace, service, upstreams)
            if mesh_service(service)
            else cluster_name(workspace, str(service["id"])),
            "timeout": "0s",
            "idle_timeout": seconds(
                max(service.get("read_timeout") or 0, service.get("write_timeout") or 0), 60000
            ),
        }
        retries = service.get("retries")
        retries = 5 if retries is None else int(retries)
        if retries > 0:
            action["retry_policy"] = {"retry_on": "connect-failure,refused-stream", "num_retries": retries}
        if not spec.preserve_host:
            action.update(_host_rewrite(service, upstreams))
            action["append_x_forwarded_host"] = True  # the client's Host, as Kong's X-Forwarded-Host
        upstream = upstreams.get(str(service.get("host") or ""))
        hashing = _hash_policy(upstream, path)
        if hashing:
            action["hash_policy"] = hashing
        copy_path = uses_uri_capture(upstream) and path is not None and path.startswith("~")
        proxied: list[dict[str, Any]] = []
        for extra, rewrite in _rewrites(spec, path):
            # an extra path specifier (the exact path of a stripped prefix) replaces the matcher's own
            kept = {k: v for k, v in match.items() if k in ("headers", "filter_state")}
            fields = {**(kept if extra else match), **extra}
            proxied.append({"name": name, "match": fields, "route": {**action, **rewrite}})
            if copy_path:
                proxied[-1]["request_headers_to_add"] = [
                    {
                        "header": {"key": HASH_PATH_HEADER, "value": "%REQ(:PATH)%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ]
        identity = _identity(workspace, spec, service)
        out += mesh_leg.mark(kong_plugins.apply(plugins or {}, proxied, identity), service, upstreams)
    return out


def _identity(workspace: str, spec: RouteSpec, service: Mapping[str, Any] | None) -> dict[str, str | None]:
    """Which Kong route (and service) Envoy routes serve, for the plugins that log it."""
    return {
        "workspace": workspace,
        "route_id": spec.id,
        "route_name": spec.name,
        "service_id": str(service["id"]) if service else None,
        "service_name": str(service["name"]) if service and service.get("name") else None,
    }


def _direct(name: str, match: dict[str, Any], status: int, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "direct_response": {"status": status, "body": {"inline_string": json_body(message)}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": _JSON}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }


def _virtual_host(workspace: str) -> dict[str, Any]:
    """The one catch-all virtual host, with the request headers Kong adds that Envoy does not (Envoy sets
    X-Forwarded-For and X-Forwarded-Proto itself; X-Forwarded-Host is appended on a host rewrite)."""
    return {
        "name": f"kong:{workspace}",
        "domains": ["*"],
        "request_headers_to_add": [
            {
                "header": {"key": key, "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
            for key, value in (
                ("x-real-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                ("x-forwarded-port", "%DOWNSTREAM_LOCAL_PORT%"),
            )
        ],
    }


# a Kong route's keyed matchers by the route (and Service) entity they were made from: entities are replaced, never
# changed, on write, so the same objects mean the same matchers (a change among 10,000 routes parses one)
_ENTRIES_MEMO: dict[int, tuple[object, object, list[tuple[SortKey, RouteEntry]]]] = {}
_ENTRIES_MEMO_LIMIT = 200_000


def _sorted_entries(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[RouteEntry]:
    services = entities.get("services", {})
    if len(_ENTRIES_MEMO) > _ENTRIES_MEMO_LIMIT:
        _ENTRIES_MEMO.clear()
    keyed: list[tuple[SortKey, RouteEntry]] = []
    for route in entities.get("routes", {}).values():
        ref = route.get("service")
        service = services.get(ref.get("id", "")) if isinstance(ref, Mapping) else None
        memo = _ENTRIES_MEMO.get(id(route))
        if memo is None or memo[0] is not route or memo[1] is not service:
            memo = (route, service, keyed_entries(RouteSpec.from_kong(route, service)))
            _ENTRIES_MEMO[id(route)] = memo
        keyed.extend(memo[2])
    keyed.sort(key=itemgetter(0), reverse=True)  # sort_routes' order
    return [entry for _, entry in keyed]


def route_configuration(
    workspace: str,
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]],
    https: bool = False,
    port: int | None = None,
) -> dict[str, Any]:
    """The RouteConfiguration as a dict (Envoy's JSON field names)."""
    services = entities.get("services", {})
    upstreams = {str(u["name"]): u for u in entities.get("upstreams", {}).values()}
    entries = _sorted_entries(entities)
    scopes = kong_plugins.Scopes(entities.get("plugins", {}))
    routes = []
    for entry in entries:
        # consumer-scoped plugin configurations: the consumers' copies first (isthmus.gateway.plugins.auth)
        copies = consumer_copies(
            scopes,
            entry.route.id,
            entry.route.service_id,
            partial(_envoy_routes, workspace, entry, services, upstreams, https, port),
        )
        general = _envoy_routes(
            workspace,
            entry,
            services,
            upstreams,
            https,
            port,
            scopes.effective(entry.route.id, entry.route.service_id),
        )
        routes += [*copies, *_enable_filters(general, _filters_of_copies(copies))]
    routes.append(_direct("no route", {"prefix": "/"}, 404, NO_ROUTE_MESSAGE))
    return {
        "name": route_config_name(workspace, https, port),
        "virtual_hosts": [{**_virtual_host(workspace), "routes": routes}],
    }


def _filters_of_copies(copies: Sequence[Mapping[str, Any]]) -> set[str]:
    return {name for c in copies for name in c.get("typed_per_filter_config") or {}}


def _enable_filters(routes: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """``routes`` with the filters ``names`` enabled (dict form): the HTTP filters disabled by default are created
    for a request by the route first chosen, the Kong route's general one (consumer headers are removed before
    routing), so the filters its consumer copies configure must be enabled there too (without a configuration of
    their own there they do nothing)."""
    out = []
    for r in routes:
        per_filter = r.get("typed_per_filter_config") or {}
        missing = sorted(names - set(per_filter))
        out.append(
            {**r, "typed_per_filter_config": {**per_filter, **{n: _ENABLED for n in missing}}}
            if missing
            else r
        )
    return out


_ENABLED = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}


def _enable_filter_messages(
    routes: list[route_components_pb2.Route], names: set[str]
) -> list[route_components_pb2.Route]:
    """:func:`_enable_filters` for Route messages (the memoised ones are copied, never changed)."""
    out = []
    for r in routes:
        missing = sorted(names - set(r.typed_per_filter_config))
        if missing:
            copy = route_components_pb2.Route()
            copy.CopyFrom(r)
            for name in missing:
                copy.typed_per_filter_config[name].Pack(
                    route_components_pb2.FilterConfig(config=any_pb2.Any())
                )
            r = copy
        out.append(r)
    return out


# Envoy routes of one matcher, by everything they are made of: a change to one route among thousands converts one.
_ROUTE_MEMO: dict[tuple[object, ...], list[route_components_pb2.Route]] = {}
_ROUTE_MEMO_LIMIT = 200_000


def route_message(
    workspace: str, entities: Mapping[str, Mapping[str, Mapping[str, Any]]], https: bool, port: int | None
) -> route_pb2.RouteConfiguration:
    services = entities.get("services", {})
    upstreams = {str(u["name"]): u for u in entities.get("upstreams", {}).values()}
    service_keys = {sid: json.dumps(svc, sort_keys=True, default=str) for sid, svc in services.items()}
    upstream_keys = {name: json.dumps(u, sort_keys=True, default=str) for name, u in upstreams.items()}
    if len(_ROUTE_MEMO) > _ROUTE_MEMO_LIMIT:
        _ROUTE_MEMO.clear()
    out = route_pb2.RouteConfiguration(name=route_config_name(workspace, https, port))
    vhost = out.virtual_hosts.add()
    json_format.ParseDict(_virtual_host(workspace), vhost)
    scopes = kong_plugins.Scopes(entities.get("plugins", {}))
    for entry in _sorted_entries(entities):
        sid = entry.route.service_id or ""
        host = str(services[sid].get("host") or "") if sid in services else ""
        plugins = scopes.effective(entry.route.id, entry.route.service_id)
        key = (
            https,
            port if entry.route.hosts and any(has_port(h) for h in entry.route.hosts) else None,
            workspace,
            entry.matcher_id,
            entry.paths,
            entry.route,
            service_keys.get(sid),
            upstream_keys.get(host),
            json.dumps(plugins, sort_keys=True, default=str) if plugins else None,
        )
        messages = _ROUTE_MEMO.get(key)
        if messages is None:
            messages = [
                json_format.ParseDict(r, route_components_pb2.Route())
                for r in _envoy_routes(workspace, entry, services, upstreams, https, port, plugins)
            ]
            _ROUTE_MEMO[key] = messages
        build = partial(_envoy_routes, workspace, entry, services, upstreams, https, port)
        copies = consumer_copies(scopes, entry.route.id, entry.route.service_id, build)
        vhost.routes.extend(json_format.ParseDict(r, route_components_pb2.Route()) for r in copies)
        vhost.routes.extend(
            _enable_filter_messages(messages, _filters_of_copies(copies)) if copies else messages
        )
    vhost.routes.append(
        json_format.ParseDict(
            _direct("no route", {"prefix": "/"}, 404, NO_ROUTE_MESSAGE), route_components_pb2.Route()
        )
    )
    index_routes(vhost)  # thousands of routes: a prefix map instead of a list tried in turn
    return out
