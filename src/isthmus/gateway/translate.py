"""A workspace's Kong entities -> the Envoy resources of a gateway proxy (pure; no I/O). The routes are
:mod:`isthmus.gateway.envoy_routes`'s; listeners, certificates and clusters are here.

* One HTTP listener per ``--proxy-listen`` address, each an HCM with ``normalize_path`` and ``merge_slashes`` (Kong
  matches the normalised path, :func:`isthmus.gateway.router.normalize_path`), the consumer headers removed before
  routing (``early_header_mutation_extensions``: a client can never forge a consumer) and RDS pointing at one
  RouteConfiguration per workspace.
* That RouteConfiguration has one catch-all virtual host whose routes are Kong's matchers in
  :func:`isthmus.gateway.router.sort_routes` order (Envoy takes the first route that matches, as Kong does):
  hosts as a case-insensitive ``:authority`` regex (exact, ``*.x`` suffix, ``x.*`` prefix; a host without a port
  accepts any port; ``host:port`` needs that port in the Host header or, without one there, as the listener's: then
  each listener port gets its own RouteConfiguration), prefix paths as ``prefix``, ``~`` paths as ``safe_regex`` (Kong anchors at the start only, so
  ``.*`` is appended), methods as a ``:method`` regex, headers as regexes (``~*`` values searched
  case-insensitively), ``snis`` (https RouteConfiguration only: SNIs do not count over plain HTTP) as a
  ``filter_state`` matcher on the connection's SNI, which the TLS listeners' ``set_filter_state`` network filter
  records. A matcher with several paths becomes consecutive Envoy routes.
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
  system bundle) when ``tls_verify`` is true (``tls_verify_depth`` as the maximum depth), presenting the Service's
  (else the Upstream's) ``client_certificate`` (an SDS secret). ``connect_timeout`` is the cluster's; ``read_timeout`` and
  ``write_timeout`` bound the idle time of a request (Envoy has no per-read timer; Kong has no total timeout, so
  the route timeout is off); ``retries`` retries connection failures (nginx's ``proxy_next_upstream error``
  never resends a request that reached the upstream either).

* An Upstream with ``algorithm: consistent-hashing`` is a RING_HASH cluster (``slots`` as the minimum ring size)
  and its routes hash on ``hash_on`` (a ``terminal`` policy) then ``hash_fallback``: consumer (``x-consumer-id``,
  set by the auth filter), ip, header, cookie (generated when missing), path (without the query), query_arg,
  uri_capture (the route's regex capture, by a ``regex_rewrite`` of a copy of the matched path the route takes
  before its own rewrite, since Envoy hashes after it; the cluster's upstream filter drops the copy); the ``path``
  Envoy hashes is the upstream path (Kong's is the request's). Envoy's ring is not Kong's, so
  which target a given key reaches differs, but a key keeps its target.
* An Upstream's ``healthchecks``: :mod:`isthmus.gateway.healthchecks` (active probes as Envoy health checks,
  passive ones as outlier detection, ``threshold`` as a failing panic threshold).

Approximations: for a ``~`` path the text stripped is the regex's match plus one following ``/``; a route with a
regex path, ``strip_path: false`` and a service path without a trailing ``/`` sends ``/`` as ``<path>/``; X-Forwarded-Host
keeps the client's port and is sent only when the Host is rewritten (not with ``preserve_host``).

* ``--proxy-listen-tls`` addresses get an HTTPS listener once the workspace has a certificate: one filter chain per
  certificate, chosen by a filter-chain matcher on the SNI in Kong's order (exact SNI entity, then
  ``*.<SNI without its first label>``, then ``<SNI without its last label>.*``), the oldest certificate for any
  other name (Kong serves its own default certificate there), certificates as SDS secrets; its
  RouteConfiguration (``kong:<ws>:https``) has no https redirects.

* A Service whose host is ``<kuma.io/service>.mesh`` (Kuma's DNS names) is routed to the mesh's cluster of that
  service (:func:`mesh_service`), which the mesh reconciler builds for the gateway (mTLS with the gateway's
  identity, the mesh's policies for that leg; no ``networking.outbound`` entry needed), or to the Service's own copy
  of it where Kong values win (:mod:`isthmus.gateway.mesh_leg`).

Not yet: ``algorithm: latency`` and gRPC health probes (refused at apply), the Admin API's target health
endpoints; the Kong-vs-Envoy differences that remain are listed in ``docs/gateway/routing.md``.

Plugins: :mod:`isthmus.gateway.plugins` (their HCM filters on every listener, their per-route configuration).
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
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2  # noqa: F401
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_header_mutation_pb2,  # noqa: F401
)
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from isthmus.gateway import healthchecks, mesh_leg
from isthmus.gateway import plugins as kong_plugins
from isthmus.gateway.envoy_routes import (
    HASH_PATH_HEADER,
    SNI_FILTER_STATE,
    cluster_name,
    has_port,
    mesh_service,
    route_config_name,
    route_message,
    seconds,
    uses_uri_capture,
)
from isthmus.gateway.plugins import auth as kong_auth
from isthmus.gateway.plugins import observability as kong_observability
from isthmus.xds import types
from isthmus.xds.snapshot import Resource

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
UPSTREAM_CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
SERVER_NAME_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ServerNameInput"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


EARLY_HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)
_FORGEABLE_REMOVAL = {
    "name": "envoy.http.early_header_mutation.header_mutation",
    "typed_config": {
        "@type": EARLY_HEADER_MUTATION,
        "mutations": [{"remove": name} for name in kong_auth.FORGEABLE_HEADERS],
    },
}


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def secret_name(workspace: str, certificate_id: str) -> str:
    return f"kong:{workspace}:certificate:{certificate_id}"


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
            # the headers only the gateway may set, removed before the route is chosen (natively, on every request)
            "early_header_mutation_extensions": [_FORGEABLE_REMOVAL],
            "rds": {
                "route_config_name": route_config_name(workspace, https, address.port if per_port else None),
                "config_source": {"ads": {}, "resource_api_version": "V3"},
            },
            "local_reply_config": {"mappers": kong_plugins.local_replies()},
            # no x-envoy-* request or response headers from the router (x-envoy-original-path, upstream service
            # time, ...): Kong sends none of them
            "http_filters": [
                *kong_plugins.http_filters(),
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER, "suppress_envoy_headers": True},
                },
            ],
        },
    }


def tls_listener(
    workspace: str,
    address: ListenAddress,
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]],
    per_port: bool = False,
) -> dict[str, Any] | None:
    """The HTTPS listener: a filter chain per certificate, chosen by the connection's SNI among the SNI entities
    as Kong does (:func:`_certificate_matcher`); the oldest certificate answers other names. None without
    certificates."""
    certificates = sorted(entities.get("certificates", {}).values(), key=lambda c: (c.get("created_at") or 0, str(c["id"])))  # fmt: skip
    if not certificates:
        return None
    names: dict[str, list[str]] = {}
    for sni in entities.get("snis", {}).values():
        ref = sni.get("certificate")
        if isinstance(ref, Mapping) and ref.get("id"):
            names.setdefault(str(ref["id"]), []).append(str(sni["name"]))

    def chain(cert_id: str, named: bool) -> dict[str, Any]:
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
            "filters": [_sni_filter_state(), _hcm_filter(workspace, address, True, per_port)],
        }
        if named:
            out["name"] = _chain_name(cert_id)
        return out

    listener: dict[str, Any] = {
        "name": f"kong:https:{address}",
        "address": {"socket_address": {"address": address.host.strip("[]"), "port_value": address.port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ],
        "filter_chains": [chain(str(c["id"]), True) for c in certificates if names.get(str(c["id"]))],
        "default_filter_chain": chain(str(certificates[0]["id"]), False),
    }
    if listener["filter_chains"]:
        listener["filter_chain_matcher"] = _certificate_matcher(names)
    return listener


def _chain_name(cert_id: str) -> str:
    return f"certificate:{cert_id}"


def _sni_action(cert_id: str) -> dict[str, Any]:
    name = _chain_name(cert_id)
    return {"action": {"name": name, "typed_config": {"@type": STRING_VALUE, "value": name}}}


def _certificate_matcher(names: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Kong's certificate selection (``kong/runloop/certificate.lua``) as the listener's filter-chain matcher on
    the SNI: an exact SNI entity first, then ``*.<the SNI without its first label>``, then ``<the SNI without its
    last label>.*`` (a wildcard stands for one label); no SNI or no match: the default chain."""
    exact: dict[str, Any] = {}
    wildcards: list[tuple[int, str, str]] = []  # (Kong's order, regex, certificate id)
    for cert_id, snis in sorted(names.items()):
        for sni in sorted(snis):
            name = sni.lower()
            if name.startswith("*."):
                wildcards.append((0, "[^.]+" + re.escape(name[1:]), cert_id))
            elif name.endswith(".*"):
                wildcards.append((1, re.escape(name[:-1]) + "[^.]+", cert_id))
            else:
                exact.setdefault(name, _sni_action(cert_id))
    sni_input = {"name": "sni", "typed_config": {"@type": SERVER_NAME_INPUT}}
    fallback: dict[str, Any] | None = None
    if wildcards:
        fallback = {
            "matcher_list": {
                "matchers": [
                    {
                        "predicate": {
                            "single_predicate": {
                                "input": sni_input,
                                "value_match": {"safe_regex": {"google_re2": {}, "regex": pattern}},
                            }
                        },
                        "on_match": _sni_action(cert_id),
                    }
                    for _, pattern, cert_id in sorted(wildcards, key=lambda w: w[0])
                ]
            }
        }
    if not exact:
        assert fallback is not None
        return fallback
    tree: dict[str, Any] = {"matcher_tree": {"input": sni_input, "exact_match_map": {"map": exact}}}
    if fallback is not None:
        tree["on_no_match"] = {"matcher": fallback}
    return tree


def _sni_filter_state() -> dict[str, Any]:
    """The connection's SNI as filter state, for the routes with ``snis`` (absent when the client sent none)."""
    value = {
        "object_key": SNI_FILTER_STATE,
        "factory_key": "envoy.string",
        "format_string": {"text_format_source": {"inline_string": "%REQUESTED_SERVER_NAME%"}},
        "skip_if_empty": True,
    }
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {"@type": SET_FILTER_STATE, "on_new_connection": [value]},
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


# -- clusters ----------------------------------------------------------------------------------------------------


def _endpoint(host: str, port: int, weight: int = 1) -> dict[str, Any]:
    return {
        "endpoint": {
            "address": {"socket_address": {"address": host.strip("[]"), "port_value": port}},
            "hostname": host.strip("[]"),
        },
        "load_balancing_weight": weight,
    }


def _without_hash_path_header() -> dict[str, Any]:
    """The cluster's HTTP options for ``hash_on: uri_capture``: an upstream filter drops the path copy the routes
    hash on (Envoy hashes before its upstream filters run), so the upstream never sees it."""
    return {
        "@type": HTTP_PROTOCOL_OPTIONS,
        "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": HEADER_MUTATION,
                    "mutations": {"request_mutations": [{"remove": HASH_PATH_HEADER}]},
                },
            },
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": UPSTREAM_CODEC}},
        ],
    }


def _ref(value: Any) -> str | None:
    """An entity reference's id (``{"id": ...}`` or the bare id), or None."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


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
    out: dict[str, Any] = {"name": name, "connect_timeout": seconds(service.get("connect_timeout"), 60000)}
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
    lb_endpoints: list[dict[str, Any]] = endpoints
    if dns:
        out["type"] = "STRICT_DNS"
        out["dns_lookup_family"] = "V4_PREFERRED"
    else:
        out["type"] = "STATIC"
    out["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }
    if uses_uri_capture(upstream):
        out["typed_extension_protocol_options"] = {
            HTTP_PROTOCOL_OPTIONS.rsplit("/", 1)[1]: _without_hash_path_header()
        }
    if protocol in ("grpc", "grpcs"):
        # gRPC upstreams speak HTTP/2 (prior knowledge for grpc, over TLS for grpcs)
        options = out.setdefault("typed_extension_protocol_options", {}).setdefault(
            HTTP_PROTOCOL_OPTIONS.rsplit("/", 1)[1], {"@type": HTTP_PROTOCOL_OPTIONS}
        )
        options["explicit_http_config"] = {"http2_protocol_options": {}}
    if upstream is not None and isinstance(upstream.get("healthchecks"), Mapping):
        host_header = str(upstream["host_header"]) if upstream.get("host_header") else None
        healthchecks.apply(out, upstream["healthchecks"], host_header)
    if protocol in ("https", "grpcs", "tls"):
        context: dict[str, Any] = {"@type": UPSTREAM_TLS}
        common: dict[str, Any] = {}
        if not _is_ip(host) and upstream is None:
            context["sni"] = host
        client = _ref(service.get("client_certificate")) or _ref((upstream or {}).get("client_certificate"))
        if client is not None:
            common["tls_certificate_sds_secret_configs"] = [
                {
                    "name": secret_name(workspace, client),
                    "sds_config": {"ads": {}, "resource_api_version": "V3"},
                }
            ]
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
            depth = service.get("tls_verify_depth")
            if isinstance(depth, int):
                validation["max_verify_depth"] = depth
            common["validation_context"] = validation
        if protocol == "grpcs":
            common["alpn_protocols"] = ["h2"]
        if common:
            context["common_tls_context"] = common
        out["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    return out


# a Service's packed cluster by everything it is made of (a route change among 10,000 converts no cluster)
_CLUSTER_MEMO: dict[str, Resource] = {}
_CLUSTER_MEMO_LIMIT = 20_000


def _cluster_message(
    workspace: str,
    service: Mapping[str, Any],
    upstreams: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, Sequence[Mapping[str, Any]]],
    cas: Mapping[str, Mapping[str, Any]],
) -> Resource:
    upstream = upstreams.get(str(service.get("host") or ""))
    inputs = [
        workspace,
        service,
        upstream,
        targets.get(str(upstream["id"]), ()) if upstream is not None else (),
    ]
    if service.get("tls_verify") is True:
        inputs.append(cas)
    key = json.dumps(inputs, sort_keys=True, default=str)
    found = _CLUSTER_MEMO.get(key)
    if found is None:
        if len(_CLUSTER_MEMO) > _CLUSTER_MEMO_LIMIT:
            _CLUSTER_MEMO.clear()
        message = json_format.ParseDict(
            cluster(workspace, service, upstreams, targets, cas), cluster_pb2.Cluster()
        )
        found = _CLUSTER_MEMO[key] = Resource.of(types.CLUSTER, message)
    return found


# the packed ECDS resources by their content: kong.auth's source holds every consumer (a megabyte at 10,000), which
# a route change leaves as it is; converting it again costs more than this key
_EXTENSION_MEMO: dict[str, Resource] = {}
_EXTENSION_MEMO_SIZE = 16


# and by the object itself, for configurations their builders memoise (key-auth's map of every key): the objects
# are held, so their identities are never reused
_EXTENSION_IDENTITY: list[tuple[Mapping[str, Any], Resource]] = []


def _extension_config(config: Mapping[str, Any]) -> Resource:
    for seen, packed in _EXTENSION_IDENTITY:
        if seen is config:
            return packed
    key = json.dumps(config, sort_keys=True)
    found = _EXTENSION_MEMO.get(key)
    if found is None:
        message = json_format.ParseDict(config, extension_pb2.TypedExtensionConfig())
        found = Resource.of(kong_plugins.EXTENSION_CONFIG, message)
        if len(_EXTENSION_MEMO) >= _EXTENSION_MEMO_SIZE:
            _EXTENSION_MEMO.pop(next(iter(_EXTENSION_MEMO)))
        _EXTENSION_MEMO[key] = found
    _EXTENSION_IDENTITY.insert(0, (config, found))
    del _EXTENSION_IDENTITY[_EXTENSION_MEMO_SIZE:]
    return found


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
        _cluster_message(workspace, s, upstreams, targets, cas)
        for _, s in sorted(entities.get("services", {}).items())
        if mesh_service(s) is None
    ]
    # Services with a mesh host: their own copy of the mesh cluster where Kong sets something (isthmus.gateway.mesh_leg)
    clusters += [
        Resource.of(types.CLUSTER, json_format.ParseDict(c, cluster_pb2.Cluster()))
        for c in mesh_leg.clusters(
            workspace, (s for _, s in sorted(entities.get("services", {}).items())), upstreams
        )
    ]
    per_port = any(has_port(h) for r in entities.get("routes", {}).values() for h in r.get("hosts") or ())

    def ports(addresses: Sequence[ListenAddress]) -> list[int | None]:
        out: list[int | None] = [None]
        if per_port:
            out = [*sorted({a.port for a in addresses})]
        return out

    routes = [route_message(workspace, entities, False, p) for p in ports(listen)] if listen else []
    # Kong's logging, metrics and tracing plugins: access logs and the tracer on every HCM (plugins.observability)
    observed, observed_clusters = kong_observability.hcm(workspace, entities)
    clusters += [
        Resource.of(types.CLUSTER, json_format.ParseDict(c, cluster_pb2.Cluster())) for c in observed_clusters
    ]
    decorate = kong_observability.decorate
    listeners = [
        json_format.ParseDict(decorate(listener(workspace, a, per_port), observed), listener_pb2.Listener())
        for a in listen
    ]
    tls = [decorate(tls_listener(workspace, a, entities, per_port), observed) for a in listen_tls]
    tls = [x for x in tls if x is not None]
    if tls:
        listeners += [json_format.ParseDict(x, listener_pb2.Listener()) for x in tls]
        routes += [route_message(workspace, entities, True, p) for p in ports(listen_tls)]
    # certificates: the TLS listeners' and the Services' client certificates (Envoy asks only for those it uses)
    secrets = [
        json_format.ParseDict(tls_secret(workspace, c), secret_pb2.Secret())
        for _, c in sorted(entities.get("certificates", {}).items())
    ]
    return {
        types.CLUSTER: clusters,
        types.LISTENER: [Resource.of(types.LISTENER, x) for x in listeners],
        types.ROUTE: [Resource.of(types.ROUTE, r) for r in routes],
        types.SECRET: [Resource.of(types.SECRET, x) for x in secrets],
        # the filter configurations the listeners' HTTP filters name (ECDS: consumers and credentials, by auth)
        kong_plugins.EXTENSION_CONFIG: [
            _extension_config(x) for x in kong_plugins.extension_configs(entities)
        ],
    }
