"""The Envoy message types a MeshProxyPatch may name in a typed config (``@type``).

A type URL is resolved against the protobuf descriptor pool only, never by importing a module named after it:
the Envoy extension modules below are a fixed list of Isthmus's own, imported once by :func:`load` (not at
import time), and a type is known when it is defined in one of them or in a file they depend on. So what a patch
may use does not depend on what else the process happened to import, and no user string reaches ``import``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from functools import cache
from typing import Any

from google.protobuf import descriptor_pool, message_factory

# The generated modules of the xDS resources Isthmus serves and of the Envoy extensions commonly used in patches:
# HTTP, network and listener filters, transport sockets, cluster and upstream extensions, access loggers,
# compressors, load-balancing policies. A patch naming a type outside these (and their dependencies) is refused.
EXTENSION_MODULES: tuple[str, ...] = tuple(
    f"envoy.{name}_pb2"
    for name in (
        "config.accesslog.v3.accesslog",
        "config.cluster.v3.cluster",
        "config.core.v3.health_check",
        "config.core.v3.protocol",
        "config.core.v3.grpc_service",
        "config.endpoint.v3.endpoint",
        "config.listener.v3.listener",
        "config.rbac.v3.rbac",
        "config.route.v3.route",
        "config.route.v3.scoped_route",
        # filter-level matchers (Isthmus wraps client-specific fault filters in one)
        "extensions.common.matching.v3.extension_matcher",
        "extensions.filters.common.matcher.action.v3.skip_action",
        "type.matcher.v3.http_inputs",
        # HTTP filters
        "extensions.filters.http.adaptive_concurrency.v3.adaptive_concurrency",
        "extensions.filters.http.admission_control.v3.admission_control",
        "extensions.filters.http.bandwidth_limit.v3.bandwidth_limit",
        "extensions.filters.http.basic_auth.v3.basic_auth",
        "extensions.filters.http.buffer.v3.buffer",
        "extensions.filters.http.cdn_loop.v3.cdn_loop",
        "extensions.filters.http.compressor.v3.compressor",
        "extensions.filters.http.cors.v3.cors",
        "extensions.filters.http.csrf.v3.csrf",
        "extensions.filters.http.custom_response.v3.custom_response",
        "extensions.filters.http.decompressor.v3.decompressor",
        "extensions.filters.http.dynamic_forward_proxy.v3.dynamic_forward_proxy",
        "extensions.filters.http.ext_authz.v3.ext_authz",
        "extensions.filters.http.ext_proc.v3.ext_proc",
        "extensions.filters.http.fault.v3.fault",
        "extensions.filters.http.grpc_stats.v3.config",
        "extensions.filters.http.grpc_web.v3.grpc_web",
        "extensions.filters.http.header_mutation.v3.header_mutation",
        "extensions.filters.http.header_to_metadata.v3.header_to_metadata",
        "extensions.filters.http.health_check.v3.health_check",
        "extensions.filters.http.ip_tagging.v3.ip_tagging",
        "extensions.filters.http.json_to_metadata.v3.json_to_metadata",
        "extensions.filters.http.jwt_authn.v3.config",
        "extensions.filters.http.local_ratelimit.v3.local_rate_limit",
        "extensions.filters.http.lua.v3.lua",
        "extensions.filters.http.oauth2.v3.oauth",
        "extensions.filters.http.ratelimit.v3.rate_limit",
        "extensions.filters.http.rbac.v3.rbac",
        "extensions.filters.http.router.v3.router",
        "extensions.filters.http.set_metadata.v3.set_metadata",
        "extensions.filters.http.stateful_session.v3.stateful_session",
        "extensions.filters.http.tap.v3.tap",
        "extensions.filters.http.wasm.v3.wasm",
        # network filters
        "extensions.filters.network.connection_limit.v3.connection_limit",
        "extensions.filters.network.direct_response.v3.config",
        "extensions.filters.network.ext_authz.v3.ext_authz",
        "extensions.filters.network.http_connection_manager.v3.http_connection_manager",
        "extensions.filters.network.local_ratelimit.v3.local_rate_limit",
        "extensions.filters.network.ratelimit.v3.rate_limit",
        "extensions.filters.network.rbac.v3.rbac",
        "extensions.filters.network.redis_proxy.v3.redis_proxy",
        "extensions.filters.network.sni_cluster.v3.sni_cluster",
        "extensions.filters.network.sni_dynamic_forward_proxy.v3.sni_dynamic_forward_proxy",
        "extensions.filters.network.tcp_proxy.v3.tcp_proxy",
        "extensions.filters.network.wasm.v3.wasm",
        # listener filters
        "extensions.filters.listener.http_inspector.v3.http_inspector",
        "extensions.filters.listener.local_ratelimit.v3.local_ratelimit",
        "extensions.filters.listener.original_dst.v3.original_dst",
        "extensions.filters.listener.original_src.v3.original_src",
        "extensions.filters.listener.proxy_protocol.v3.proxy_protocol",
        "extensions.filters.listener.tls_inspector.v3.tls_inspector",
        # transport sockets
        "extensions.transport_sockets.http_11_proxy.v3.upstream_http_11_connect",
        "extensions.transport_sockets.internal_upstream.v3.internal_upstream",
        "extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol",
        "extensions.transport_sockets.raw_buffer.v3.raw_buffer",
        "extensions.transport_sockets.starttls.v3.starttls",
        "extensions.transport_sockets.tap.v3.tap",
        "extensions.transport_sockets.tcp_stats.v3.tcp_stats",
        "extensions.transport_sockets.tls.v3.secret",
        "extensions.transport_sockets.tls.v3.tls",
        "extensions.transport_sockets.tls.v3.tls_spiffe_validator_config",
        # clusters and upstreams
        "extensions.clusters.aggregate.v3.cluster",
        "extensions.clusters.dynamic_forward_proxy.v3.cluster",
        "extensions.upstreams.http.v3.http_protocol_options",
        "extensions.upstreams.tcp.v3.tcp_protocol_options",
        "extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin",
        "extensions.load_balancing_policies.cluster_provided.v3.cluster_provided",
        "extensions.load_balancing_policies.least_request.v3.least_request",
        "extensions.load_balancing_policies.maglev.v3.maglev",
        "extensions.load_balancing_policies.random.v3.random",
        "extensions.load_balancing_policies.ring_hash.v3.ring_hash",
        "extensions.load_balancing_policies.round_robin.v3.round_robin",
        # access loggers, compressors, session state
        "extensions.access_loggers.file.v3.file",
        "extensions.access_loggers.grpc.v3.als",
        "extensions.access_loggers.open_telemetry.v3.logs_service",
        "extensions.access_loggers.stream.v3.stream",
        "extensions.compression.brotli.compressor.v3.brotli",
        "extensions.compression.brotli.decompressor.v3.brotli",
        "extensions.compression.gzip.compressor.v3.gzip",
        "extensions.compression.gzip.decompressor.v3.gzip",
        "extensions.compression.zstd.compressor.v3.zstd",
        "extensions.compression.zstd.decompressor.v3.zstd",
        "extensions.http.stateful_session.cookie.v3.cookie",
        "extensions.http.stateful_session.header.v3.header",
        "extensions.wasm.v3.wasm",
    )
)


class UnknownType(KeyError):
    """A type URL that names no message Isthmus allows in a patch."""


def _messages(descriptors: Any) -> Iterator[Any]:
    for d in descriptors:
        yield d
        yield from _messages(d.nested_types)


@cache
def load() -> frozenset[str]:
    """Import the fixed list of modules (once) and return the full names of the message types they make known:
    theirs and those of every file they depend on."""
    files: dict[str, Any] = {}
    pending = [importlib.import_module(name).DESCRIPTOR for name in EXTENSION_MODULES]
    while pending:
        file = pending.pop()
        if file.name in files:
            continue
        files[file.name] = file
        pending.extend(file.dependencies)
    return frozenset(d.full_name for f in files.values() for d in _messages(f.message_types_by_name.values()))


def type_name(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` -> ``envoy.config.cluster.v3.Cluster``."""
    return type_url.rsplit("/", 1)[-1]


def check_type_url(type_url: str) -> None:
    """Raise :class:`UnknownType` unless ``type_url`` names a known message."""
    name = type_name(type_url)
    if "/" not in type_url or name not in load():
        raise UnknownType(
            f"unknown type URL {type_url!r}: expected type.googleapis.com/<an Envoy message Isthmus supports in "
            "patches>, e.g. type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        )


def message_class(type_url: str) -> Any:
    """The generated class of a known type URL, from the descriptor pool."""
    check_type_url(type_url)
    descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name(type_url))
    return message_factory.GetMessageClass(descriptor)


def unknown_type_urls(node: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """``(field path, type URL, reason)`` of every ``@type`` in a JSON-like document that is not known."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "@type":
                if not isinstance(value, str):
                    yield where, repr(value), "must be a type URL string"
                    continue
                try:
                    check_type_url(value)
                except UnknownType as exc:
                    yield where, value, str(exc.args[0])
            else:
                yield from unknown_type_urls(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from unknown_type_urls(value, f"{path}[{i}]")
