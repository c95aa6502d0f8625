"""A workspace's Kong entities -> the Envoy resources of a gateway proxy (pure; no I/O).

* One HTTP listener per ``--proxy-listen`` address, each an HCM with ``normalize_path`` and ``merge_slashes`` (Kong
  matches the normalised path, :func:`isthmus.gateway.router.normalize_path`) and RDS pointing at one
  RouteConfiguration per workspace.
* That RouteConfiguration has one catch-all virtual host whose routes are Kong's matchers in
  :func:`isthmus.gateway.router.sort_routes` order (Envoy takes the first route that matches, as Kong does):
  hosts as a case-insensitive ``:authority`` regex (exact, ``*.x`` suffix, ``x.*`` prefix; a host without a port
  accepts any port; ``host:port`` needs that port in the Host header or, without one there, as the listener's: then
  each listener port gets its own RouteConfiguration), prefix paths as ``prefix``, ``~`` paths as ``safe_regex`` (Kong anchors at the start only, so
  ``.*`` is appended), methods as a ``:method`` regex, headers as regexes (``~*`` values searched
  case-insensitively). A matcher with several paths becomes consecutive Envoy routes.
* The upstream path is Kong's ``v0`` join (:func:`isthmus.gateway.router.upstream_path`) expressed as
  ``regex_rewrite``: for a stripped prefix ``p`` and service path ``b``, ``^p/?`` becomes ``b`` (with a trailing
  ``/``); the request that is exactly ``p`` gets its own route first when Kong's answer differs (``b`` without its
  trailing slash). ``preserve_host`` keeps the client's Host, otherwise the Service's host (with a non-default
  port) is sent, or for an Upstream the target's host name (``auto_host_rewrite``).
* A route that allows ``https`` but not ``http`` answers plain requests with ``https_redirect_status_code`` (426
  with Kong's body, else a redirect to https). A route without a Service answers 503 as Kong does.
* The last route answers Kong's 404 JSON body.
* One cluster per Service: its Upstream's targets (weights, round-robin; ``least-connections`` as Envoy's
  LEAST_REQUEST) when the host names an Upstream, else ``host:port`` (STATIC for an IP, STRICT_DNS otherwise);
  ``https`` services use TLS with the host as SNI, verified against the Service's ``ca_certificates`` (or the
  system bundle) when ``tls_verify`` is true. ``connect_timeout`` is the cluster's; ``read_timeout`` and
  ``write_timeout`` bound the idle time of a request (Envoy has no per-read timer; Kong has no total timeout, so
  the route timeout is off); ``retries`` retries connection failures (nginx's ``proxy_next_upstream error``
  never resends a request that reached the upstream either).

* An Upstream with ``algorithm: consistent-hashing`` is a RING_HASH cluster (``slots`` as the minimum ring size)
  and its routes hash on ``hash_on`` then ``hash_fallback`` (ip, header, cookie (generated when missing), path,
  query_arg); Envoy's ring is not Kong's, so which target a given key reaches differs, but a key keeps its target.

Approximations: for a ``~`` path the text stripped is the regex's match plus one following ``/``; a route with a
regex path, ``strip_path: false`` and a service path without a trailing ``/`` sends ``/`` as ``<path>/``; X-Forwarded-Host
keeps the client's port and is sent only when the Host is rewritten (not with ``preserve_host``).

* ``--proxy-listen-tls`` addresses get an HTTPS listener once the workspace has a certificate: one filter chain per
  certificate selected by its SNI entities, the oldest certificate for any other name (Kong serves its own default
  certificate there), certificates as SDS secrets; its RouteConfiguration (``kong:<ws>:https``) has no https
  redirects.

* A Service whose host is ``<kuma.io/service>.mesh`` (Kuma's DNS names) is routed to the mesh's cluster of that
  service (:func:`mesh_service`): the gateway Dataplane lists the service in ``networking.outbound`` for now, and the
  mesh reconciler builds that cluster (mTLS with the gateway's identity, the mesh's policies for that outbound).

Not yet: routes' ``snis``, ``hash_on: consumer`` and ``uri_capture``, health checks, the mesh leg without an
outbound entry (and Kong values overriding mesh policies), plugins.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from google.protobuf import json_format

from isthmus.gateway.router import (
    NO_ROUTE_MESSAGE,
    RouteEntry,
    RouteSpec,
    sort_routes,
    upstream_path,
)
from isthmus.xds import types
from isthmus.xds.snapshot import Resource

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NO_SERVICE_MESSAGE = "no Service found with those values"
HTTPS_REQUIRED_MESSAGE = "Please use HTTPS protocol"
_JSON = "application/json; charset=utf-8"
_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}  # fmt: skip


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def route_config_name(workspace: str, https: bool = False, port: int | None = None) -> str:
    """``kong:<ws>`` (``:https`` for the TLS listeners; ``:<port>`` when some route host names a port, since Kong
    then compares it with the listener's port)."""
    name = f"kong:{workspace}:https" if https else f"kong:{workspace}"
    return name if port is None else f"{name}:{port}"


def secret_name(workspace: str, certificate_id: str) -> str:
    return f"kong:{workspace}:certificate:{certificate_id}"


def cluster_name(workspace: str, service_id: str) -> str:
    return f"kong:{workspace}:service:{service_id}"


def _body(message: str) -> str:
    return json.dumps({"message": message}, indent=2) + "\n"


def _ms(value: Any, default: int) -> str:
    ms = int(value) if isinstance(value, int) and value >= 0 else default
    return f"{ms / 1000:.3f}s"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# -- listeners ---------------------------------------------------------------------------------------------------


def _hcm_filter(
    workspace: str, address: ListenAddress, https: bool, per_port: bool = False
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": f"kong_{'https_' if https else ''}{address.port}",
            "codec_type": "AUTO",
            "normalize_path": True,
            "merge_slashes": True,
            "use_remote_address": True,
            "rds": {
                "route_config_name": route_config_name(workspace, https, address.port if per_port else None),
                "config_source": {"ads": {}, "resource_api_version": "V3"},
            },
            # no x-envoy-* request or response headers from the router (x-envoy-original-path, upstream service
            # time, ...): Kong sends none of them
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER, "suppress_envoy_headers": True},
                }
            ],
        },
    }


def tls_listener(
    workspace: str,
    address: ListenAddress,
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]],
    per_port: bool = False,
) -> dict[str, Any] | None:
    """The HTTPS listener: a filter chain per certificate, chosen by SNI among its SNI entities (``*.x`` and exact
    names, as Envoy's ``server_names``); the oldest certificate answers other names. None without certificates."""
    certificates = sorted(entities.get("certificates", {}).values(), key=lambda c: (c.get("created_at") or 0, str(c["id"])))  # fmt: skip
    if not certificates:
        return None
    names: dict[str, list[str]] = {}
    for sni in entities.get("snis", {}).values():
        ref = sni.get("certificate")
        if isinstance(ref, Mapping) and ref.get("id"):
            names.setdefault(str(ref["id"]), []).append(str(sni["name"]))

    def chain(cert_id: str, server_names: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": DOWNSTREAM_TLS,
                    "common_tls_context": {
                        "alpn_protocols": ["h2", "http/1.1"],
                        "tls_certificate_sds_secret_configs": [
                            {
                                "name": secret_name(workspace, cert_id),
                                "sds_config": {"ads": {}, "resource_api_version": "V3"},
                            }
                        ],
                    },
                },
            },
            "filters": [_hcm_filter(workspace, address, True, per_port)],
        }
        if server_names:
            out["filter_chain_match"] = {"server_names": sorted(server_names)}
        return out

    return {
        "name": f"kong:https:{address}",
        "address": {"socket_address": {"address": address.host.strip("[]"), "port_value": address.port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ],
        "filter_chains": [
            chain(str(c["id"]), names[str(c["id"])]) for c in certificates if names.get(str(c["id"]))
        ],
        "default_filter_chain": chain(str(certificates[0]["id"]), None),
    }


def tls_secret(workspace: str, certificate: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": secret_name(workspace, str(certificate["id"])),
        "tls_certificate": {
            "certificate_chain": {"inline_string": str(certificate["cert"])},
            "private_key": {"inline_string": str(certificate["key"])},
        },
    }


def listener(workspace: str, address: ListenAddress, per_port: bool = False) -> dict[str, Any]:
    return {
        "name": f"kong:http:{address}",
        "address": {"socket_address": {"address": address.host.strip("[]"), "port_value": address.port}},
        "filter_chains": [{"filters": [_hcm_filter(workspace, address, False, per_port)]}],
    }


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


def _has_port(host: str) -> bool:
    name, sep, port = host.rpartition(":")
    return bool(sep and name and port.isdigit())


def _header_value_regex(values: Sequence[str]) -> str:
    options = [f".*(?:{v[2:].lower()}).*" if v.startswith("~*") else re.escape(v) for v in values]
    return "(?i)(?:" + "|".join(options) + ")"


def _regex(pattern: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": pattern}}


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


def _hash_policy(upstream: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Envoy's hash policies for an Upstream's ``hash_on`` then ``hash_fallback`` (Envoy, like Kong, falls back to
    the next one when a request lacks the first one's input). ``consumer`` and ``uri_capture`` are not there yet."""
    if upstream is None or upstream.get("algorithm") != "consistent-hashing":
        return []
    out: list[dict[str, Any]] = []
    for prefix in ("hash_on", "hash_fallback"):
        kind = upstream.get(prefix)
        if kind == "ip":
            out.append({"connection_properties": {"source_ip": True}})
        elif kind == "header" and upstream.get(f"{prefix}_header"):
            out.append({"header": {"header_name": str(upstream[f"{prefix}_header"]).lower()}})
        elif kind == "cookie" and upstream.get("hash_on_cookie"):
            # a missing cookie is generated (a session cookie on hash_on_cookie_path), as Kong does
            cookie = {
                "name": upstream["hash_on_cookie"],
                "ttl": "0s",
                "path": upstream.get("hash_on_cookie_path") or "/",
            }
            out.append({"cookie": cookie})
        elif kind == "path":
            out.append({"header": {"header_name": ":path"}})
        elif kind == "query_arg" and upstream.get(f"{prefix}_query_arg"):
            out.append({"query_parameter": {"name": upstream[f"{prefix}_query_arg"]}})
    return out


def _envoy_routes(
    workspace: str,
    entry: RouteEntry,
    services: Mapping[str, Mapping[str, Any]],
    upstreams: Mapping[str, Mapping[str, Any]],
    https: bool = False,
    port: int | None = None,
) -> list[dict[str, Any]]:
    spec = entry.route
    headers = _headers(spec, port)
    out: list[dict[str, Any]] = []
    for path in entry.paths or (None,):
        name = f"{spec.name or spec.id}" + (f" {path}" if path else "")
        match = {**_path_match(path), **({"headers": headers} if headers else {})}
        if not https and "https" in spec.protocols and "http" not in spec.protocols:
            code = spec.https_redirect_status_code
            if code in _REDIRECT_CODES:
                out.append({"name": name, "match": match, "redirect": {"https_redirect": True, "response_code": _REDIRECT_CODES[code]}})  # fmt: skip
            else:
                out.append(_direct(name, match, code, HTTPS_REQUIRED_MESSAGE))
            continue
        service = services.get(spec.service_id or "")
        if service is None:
            out.append(_direct(name, match, 503, NO_SERVICE_MESSAGE))
            continue
        action: dict[str, Any] = {
            "cluster": mesh_service(service) or cluster_name(workspace, str(service["id"])),
            "timeout": "0s",
            "idle_timeout": _ms(
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
        hashing = _hash_policy(upstreams.get(str(service.get("host") or "")))
        if hashing:
            action["hash_policy"] = hashing
        for extra, rewrite in _rewrites(spec, path):
            # an extra path specifier (the exact path of a stripped prefix) replaces the matcher's own
            fields = {**({k: v for k, v in match.items() if k == "headers"} if extra else match), **extra}
            out.append({"name": name, "match": fields, "route": {**action, **rewrite}})
    return out


def _direct(name: str, match: dict[str, Any], status: int, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "direct_response": {"status": status, "body": {"inline_string": _body(message)}},
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


def _sorted_entries(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[RouteEntry]:
    services = entities.get("services", {})
    specs = []
    for route in entities.get("routes", {}).values():
        ref = route.get("service")
        service = services.get(ref.get("id", "")) if isinstance(ref, Mapping) else None
        specs.append(RouteSpec.from_kong(route, service))
    return sort_routes(specs)


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
    routes = [
        r for entry in entries for r in _envoy_routes(workspace, entry, services, upstreams, https, port)
    ]
    routes.append(_direct("no route", {"prefix": "/"}, 404, NO_ROUTE_MESSAGE))
    return {
        "name": route_config_name(workspace, https, port),
        "virtual_hosts": [{**_virtual_host(workspace), "routes": routes}],
    }


# Envoy routes of one matcher, by everything they are made of: a change to one route among thousands converts one.
_ROUTE_MEMO: dict[tuple[object, ...], list[route_components_pb2.Route]] = {}
_ROUTE_MEMO_LIMIT = 200_000


def _route_message(
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
    for entry in _sorted_entries(entities):
        sid = entry.route.service_id or ""
        host = str(services[sid].get("host") or "") if sid in services else ""
        key = (
            https,
            port if entry.route.hosts and any(_has_port(h) for h in entry.route.hosts) else None,
            workspace,
            entry.matcher_id,
            entry.paths,
            entry.route,
            service_keys.get(sid),
            upstream_keys.get(host),
        )
        messages = _ROUTE_MEMO.get(key)
        if messages is None:
            messages = [
                json_format.ParseDict(r, route_components_pb2.Route())
                for r in _envoy_routes(workspace, entry, services, upstreams, https, port)
            ]
            _ROUTE_MEMO[key] = messages
        vhost.routes.extend(messages)
    vhost.routes.append(
        json_format.ParseDict(
            _direct("no route", {"prefix": "/"}, 404, NO_ROUTE_MESSAGE), route_components_pb2.Route()
        )
    )
    return out


# -- clusters ----------------------------------------------------------------------------------------------------


def _endpoint(host: str, port: int, weight: int = 1) -> dict[str, Any]:
    return {
        "endpoint": {
            "address": {"socket_address": {"address": host.strip("[]"), "port_value": port}},
            "hostname": host.strip("[]"),
        },
        "load_balancing_weight": weight,
    }


def _target(target: str) -> tuple[str, int]:
    """Kong's ``host[:port]`` / ``[ipv6][:port]`` target (port 8000 when absent)."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 8000
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return target, 8000


def cluster(
    workspace: str,
    service: Mapping[str, Any],
    upstreams: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, Sequence[Mapping[str, Any]]],
    ca_certificates: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    host = str(service.get("host") or "")
    protocol = str(service.get("protocol") or "http")
    port = int(service.get("port") or (443 if protocol in ("https", "grpcs") else 80))
    name = cluster_name(workspace, str(service["id"]))
    out: dict[str, Any] = {"name": name, "connect_timeout": _ms(service.get("connect_timeout"), 60000)}
    upstream = upstreams.get(host)
    if upstream is not None:
        endpoints = []
        for t in targets.get(str(upstream["id"]), ()):
            weight = int(t.get("weight", 100))
            if weight > 0:
                thost, tport = _target(str(t["target"]))
                endpoints.append(_endpoint(thost, tport, weight))
        dns = any(not _is_ip(e["endpoint"]["hostname"]) for e in endpoints)
        if upstream.get("algorithm") == "least-connections":
            out["lb_policy"] = "LEAST_REQUEST"
        elif upstream.get("algorithm") == "consistent-hashing":
            out["lb_policy"] = "RING_HASH"
            out["ring_hash_lb_config"] = {"minimum_ring_size": int(upstream.get("slots") or 10000)}
    else:
        endpoints = [_endpoint(host, port)]
        dns = not _is_ip(host)
    if dns:
        out["type"] = "STRICT_DNS"
        out["dns_lookup_family"] = "V4_PREFERRED"
    else:
        out["type"] = "STATIC"
    out["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
    }
    if protocol in ("https", "grpcs", "tls"):
        context: dict[str, Any] = {"@type": UPSTREAM_TLS}
        if not _is_ip(host) and upstream is None:
            context["sni"] = host
        if service.get("tls_verify") is True:
            pems = [
                str(ca_certificates[c["id"] if isinstance(c, Mapping) else str(c)]["cert"])
                for c in service.get("ca_certificates") or ()
                if (c["id"] if isinstance(c, Mapping) else str(c)) in ca_certificates
            ]
            trusted = {"inline_string": "\n".join(pems)} if pems else {"filename": SYSTEM_CA_BUNDLE}
            validation: dict[str, Any] = {"trusted_ca": trusted}
            if upstream is None and not _is_ip(host):
                validation["match_typed_subject_alt_names"] = [
                    {"san_type": "DNS", "matcher": {"exact": host}}
                ]
            context["common_tls_context"] = {"validation_context": validation}
        out["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    return out


# -- everything --------------------------------------------------------------------------------------------------


def translate(
    workspace: str,
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]],
    listen: Sequence[ListenAddress],
    listen_tls: Sequence[ListenAddress] = (),
) -> dict[str, list[Resource]]:
    """The gateway's resources ``{type_url: [Resource]}`` for a workspace's entities (``Workspace.entities``):
    HTTP listeners on ``listen``, HTTPS listeners on ``listen_tls`` (once the workspace has a certificate)."""
    upstreams = {str(u["name"]): u for u in entities.get("upstreams", {}).values()}
    targets: dict[str, list[Mapping[str, Any]]] = {}
    for t in sorted(entities.get("targets", {}).values(), key=lambda t: (str(t.get("target")), str(t["id"]))):
        ref = t.get("upstream")
        if isinstance(ref, Mapping) and ref.get("id"):
            targets.setdefault(str(ref["id"]), []).append(t)
    cas = entities.get("ca_certificates", {})
    clusters = [
        json_format.ParseDict(cluster(workspace, s, upstreams, targets, cas), cluster_pb2.Cluster())
        for _, s in sorted(entities.get("services", {}).items())
        if mesh_service(s) is None
    ]
    per_port = any(_has_port(h) for r in entities.get("routes", {}).values() for h in r.get("hosts") or ())

    def ports(addresses: Sequence[ListenAddress]) -> list[int | None]:
        out: list[int | None] = [None]
        if per_port:
            out = [*sorted({a.port for a in addresses})]
        return out

    routes = [_route_message(workspace, entities, False, p) for p in ports(listen)] if listen else []
    listeners = [
        json_format.ParseDict(listener(workspace, a, per_port), listener_pb2.Listener()) for a in listen
    ]
    secrets = []
    tls = [x for x in (tls_listener(workspace, a, entities, per_port) for a in listen_tls) if x is not None]
    if tls:
        listeners += [json_format.ParseDict(x, listener_pb2.Listener()) for x in tls]
        routes += [_route_message(workspace, entities, True, p) for p in ports(listen_tls)]
        secrets = [
            json_format.ParseDict(tls_secret(workspace, c), secret_pb2.Secret())
            for _, c in sorted(entities.get("certificates", {}).items())
        ]
    return {
        types.CLUSTER: [Resource.of(types.CLUSTER, c) for c in clusters],
        types.LISTENER: [Resource.of(types.LISTENER, x) for x in listeners],
        types.ROUTE: [Resource.of(types.ROUTE, r) for r in routes],
        types.SECRET: [Resource.of(types.SECRET, x) for x in secrets],
    }
