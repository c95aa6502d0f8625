"""Inbound and outbound listeners."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from isthmus.ir.model import (
    CONSUMER_HEADERS,
    InboundListener,
    OutboundListener,
    Permissions,
    Protocol,
    TlsMode,
)
from isthmus.ir.traffic import Timeouts
from isthmus.xds.translate import inbound_http, names, observability, rbac, routes, timeouts, tls
from isthmus.xds.translate.common import ads, pack, socket_address

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
ROUTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"

HCM_CLS = hcm_pb2.HttpConnectionManager


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))


def _hcm(
    stat_prefix: str,
    http_filters: list[Any],
    limits: Timeouts | None,
    seen: InboundListener | OutboundListener | None = None,
    **route: Any,
) -> listener_components_pb2.Filter:
    manager = HCM_CLS(
        stat_prefix=stat_prefix,
        codec_type=HCM_CLS.AUTO,
        http_filters=[*http_filters, _router()],
        **route,
    )
    timeouts.hcm(manager, limits)
    if seen is not None:  # MeshAccessLog, MeshTrace
        observability.decorate_hcm(manager, seen.access_logs, seen.tracing)
    return listener_components_pb2.Filter(name=HCM, typed_config=pack(manager))


def _tcp_proxy(
    stat_prefix: str, cluster: str, limits: Timeouts | None, seen: InboundListener | None = None
) -> listener_components_pb2.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
    timeouts.tcp_proxy(proxy, limits)
    if seen is not None and seen.access_logs:  # MeshAccessLog
        proxy.access_log.extend(observability.access_logs(seen.access_logs))
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))


@lru_cache(maxsize=4096)
def _packed_rbac(permissions: Permissions) -> Any:
    """The HTTP RBAC config, packed once per distinct permission set (shared by a service's instances)."""
    return pack(rbac.http_filter_config(permissions))


def _inbound_filters(ir: InboundListener) -> list[listener_components_pb2.Filter]:
    stat = f"inbound_{ir.port}"
    if ir.protocol is Protocol.TCP:
        filters = []
        if ir.permissions is not None:
            filters.append(
                listener_components_pb2.Filter(
                    name=NETWORK_RBAC,
                    typed_config=pack(rbac.network_filter_config(ir.permissions, f"{stat}_rbac_")),
                )
            )
        filters.extend(inbound_http.network_filters(ir))
        filters.append(_tcp_proxy(stat, ir.local_cluster, ir.timeouts, ir))
        return filters
    http_filters = []
    if ir.permissions is not None:
        http_filters.append(hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=_packed_rbac(ir.permissions)))
    http_filters.extend(inbound_http.http_filters(ir))
    local_route = route_components_pb2.RouteAction(cluster=ir.local_cluster)
    timeouts.route(local_route, ir.timeouts)
    route_config = route_pb2.RouteConfiguration(
        name=ir.name,
        validate_clusters={"value": False},
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=ir.service, domains=["*"], routes=_inbound_routes(ir, local_route)
            )
        ],
    )
    extra: dict[str, Any] = {}
    if ir.tls is not None:
        extra = {
            "forward_client_cert_details": HCM_CLS.SANITIZE_SET,
            "set_current_client_cert_details": HCM_CLS.SetCurrentClientCertDetails(uri=True),
        }
    return [_hcm(stat, http_filters, ir.timeouts, ir, route_config=route_config, **extra)]


def _inbound_routes(
    ir: InboundListener, local_route: route_components_pb2.RouteAction
) -> list[route_components_pb2.Route]:
    """Requests from a gateway of the mesh (the ``URI`` of the X-Forwarded-Client-Cert this inbound sets from the
    peer certificate; a client's own XFCC is replaced, SANITIZE_SET) keep Kong's consumer headers; every other
    request loses them."""
    out = []
    if ir.tls is not None and ir.gateway_callers:
        ids = "|".join(re.escape(i) for i in ir.gateway_callers)
        xfcc = route_components_pb2.HeaderMatcher(name="x-forwarded-client-cert")
        xfcc.string_match.safe_regex.regex = f"(?:.*[;,])?URI=(?:{ids})(?:[;,].*)?"
        out.append(
            route_components_pb2.Route(
                name="gateway",
                match=route_components_pb2.RouteMatch(prefix="/", headers=[xfcc]),
                route=local_route,
            )
        )
    out.append(
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=local_route,
            request_headers_to_remove=list(CONSUMER_HEADERS),
        )
    )
    return out


def inbound(ir: InboundListener) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=ir.name,
        address=socket_address(ir.address, ir.port),
        traffic_direction=base_pb2.INBOUND,
        enable_reuse_port={"value": False},
    )
    if (
        not ir.bind
    ):  # a transparent proxy's inbound: reached from the inbound catch-all (xds/translate/transparent)
        listener.bind_to_port.value = False
    filters = _inbound_filters(ir)
    if ir.tls_mode is TlsMode.OFF or ir.tls is None:
        listener.filter_chains.append(listener_components_pb2.FilterChain(filters=filters))
        return listener
    secure = listener_components_pb2.FilterChain(
        filters=filters,
        transport_socket=tls.downstream_socket(ir.tls, ir.trust_domain_prefix),
    )
    if ir.tls_mode is TlsMode.STRICT:
        listener.filter_chains.append(secure)
        return listener
    # PERMISSIVE: mesh mTLS when the client speaks TLS, plaintext otherwise
    secure.filter_chain_match.transport_protocol = "tls"
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    )
    listener.filter_chains.append(secure)
    listener.filter_chains.append(
        listener_components_pb2.FilterChain(
            filter_chain_match=listener_components_pb2.FilterChainMatch(transport_protocol="raw_buffer"),
            filters=_inbound_filters(ir),
        )
    )
    return listener


def outbound(ir: OutboundListener) -> listener_pb2.Listener:
    stat = f"outbound_{ir.service}_{ir.port}"
    if ir.protocol is Protocol.TCP:
        proxy = routes.tcp_proxy(stat, ir)
        if ir.access_logs:  # MeshAccessLog
            proxy.access_log.extend(observability.access_logs(ir.access_logs))
        filters = [listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
    else:
        rds = hcm_pb2.Rds(config_source=ads(), route_config_name=ir.route_config)
        filters = [_hcm(stat, [], ir.timeouts, ir, rds=rds)]
    out = listener_pb2.Listener(
        name=ir.name,
        address=socket_address(ir.address, ir.port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[listener_components_pb2.FilterChain(filters=filters)],
    )
    if not ir.bind:  # reached from a transparent proxy's outbound catch-all (xds/translate/transparent)
        out.bind_to_port.value = False
    else:
        names.bind_vip(out, ir.address)  # a virtual IP (isthmus.names) binds with freebind
    return out


def outbound_routes(ir: OutboundListener) -> route_pb2.RouteConfiguration:
    rc = routes.route_configuration(ir)
    return rc if ir.port else observability.mark_gateway_leg(rc, ir)  # port 0: a gateway's mesh leg
