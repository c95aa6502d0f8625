"""Outbound routing: the RouteConfiguration of an HTTP outbound (MeshHTTPRoute) and the TCP proxy of a TCP
outbound (MeshTCPRoute). Without routes, everything goes to the outbound's cluster.

Each IR :class:`~isthmus.ir.traffic.HttpRoute` becomes one Envoy route per match (in the IR's order, which is
the match order), all with the route's name. Path matches: ``Exact`` -> ``path``; ``PathPrefix`` ->
``path_separated_prefix`` (``/api`` matches ``/api`` and ``/api/x``, not ``/apix``; ``/`` -> ``prefix: /``);
``RegularExpression`` -> ``safe_regex``. The method is a ``:method`` header matcher; ``Absent`` is an inverted
presence match.

A route with a ``stat_prefix`` (MeshHTTPRoute's rules, never the default route of an outbound without one) gets
Envoy's per-route stats, ``vhost.<service>.route.<stat_prefix>.upstream_rq_*``, which Envoy's Prometheus output
tags ``envoy_virtual_host`` and ``envoy_route`` (the agent adds MeshMetric's ``route`` label from the latter).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from isthmus.ir.model import OutboundListener
from isthmus.ir.traffic import (
    HeaderModifier,
    HttpRoute,
    Mirror,
    Redirect,
    RouteMatch,
    ValueMatch,
    WeightedBackend,
)
from isthmus.xds.translate import load_balancing, retries, timeouts

HVO = base_pb2.HeaderValueOption
REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


UINT32_MAX = 4_294_967_295


def envoy_weights(backends: Sequence[WeightedBackend]) -> list[int]:
    """The backends' weights as Envoy takes them: each a uint32 and their sum at most ``UINT32_MAX``. Larger
    weights (a schema-valid ``weight`` is unbounded, and refs to the same cluster add up) are scaled down in
    proportion, none below 1."""
    weights = [b.weight for b in backends]
    total = sum(weights)
    if total <= UINT32_MAX:
        return weights
    budget = UINT32_MAX - len(weights)  # room for rounding each one up to at least 1
    return [max(1, w * budget // total) for w in weights]


def _regex(value: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=value)


def _string_match(m: ValueMatch) -> string_pb2.StringMatcher:
    if m.type == "Prefix":
        return string_pb2.StringMatcher(prefix=m.value)
    if m.type == "RegularExpression":
        return string_pb2.StringMatcher(safe_regex=_regex(m.value))
    return string_pb2.StringMatcher(exact=m.value)


def _header_matcher(m: ValueMatch) -> rc.HeaderMatcher:
    # every value starts with "": an empty prefix is a presence match (Envoy refuses an empty prefix)
    if m.type == "Present" or (m.type == "Prefix" and not m.value):
        return rc.HeaderMatcher(name=m.name, present_match=True)
    if m.type == "Absent":
        return rc.HeaderMatcher(name=m.name, present_match=True, invert_match=True)
    return rc.HeaderMatcher(name=m.name, string_match=_string_match(m))


def _path_prefix(value: str) -> rc.RouteMatch:
    prefix = value.rstrip("/")
    if not prefix:
        return rc.RouteMatch(prefix="/")
    return rc.RouteMatch(path_separated_prefix=prefix)


def route_match(m: RouteMatch) -> rc.RouteMatch:
    if m.path_type == "Exact":
        out = rc.RouteMatch(path=m.path)
    elif m.path_type == "RegularExpression":
        out = rc.RouteMatch(safe_regex=_regex(m.path))
    elif m.path_type == "PathPrefix":
        out = _path_prefix(m.path)
    else:
        out = rc.RouteMatch(prefix="/")
    if m.method:
        out.headers.append(
            rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=m.method))
        )
    out.headers.extend(_header_matcher(h) for h in m.headers)
    out.query_parameters.extend(
        rc.QueryParameterMatcher(name=q.name, string_match=_string_match(q)) for q in m.query
    )
    return out


def _headers_to_add(mod: HeaderModifier) -> list[base_pb2.HeaderValueOption]:
    out = [
        HVO(header=base_pb2.HeaderValue(key=k, value=v), append_action=HVO.OVERWRITE_IF_EXISTS_OR_ADD)
        for k, v in mod.set
    ]
    out += [
        HVO(header=base_pb2.HeaderValue(key=k, value=v), append_action=HVO.APPEND_IF_EXISTS_OR_ADD)
        for k, v in mod.add
    ]
    return out


def _mirror(m: Mirror) -> rc.RouteAction.RequestMirrorPolicy:
    policy = rc.RouteAction.RequestMirrorPolicy(cluster=m.cluster)
    if m.percent < 100:
        if float(m.percent).is_integer():
            fraction = percent_pb2.FractionalPercent(
                numerator=int(m.percent), denominator=percent_pb2.FractionalPercent.HUNDRED
            )
        else:
            fraction = percent_pb2.FractionalPercent(
                numerator=round(m.percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
            )
        policy.runtime_fraction.default_value.CopyFrom(fraction)
    return policy


def _prefix_rewrite(action: rc.RouteAction | rc.RedirectAction, match: RouteMatch | None, new: str) -> None:
    """Replace the matched prefix by ``new`` (Gateway API's ``ReplacePrefixMatch``). Envoy's ``prefix_rewrite``
    alone would turn ``/api/x`` (prefix ``/api``, new ``/``) into ``//x``: those cases use a regex."""
    prefix = (match.path if match is not None and match.path_type == "PathPrefix" else "/").rstrip("/")
    new = new.rstrip("/") or "/"
    if prefix and new != "/":
        action.prefix_rewrite = new
    elif prefix:  # /api/x -> /x
        action.regex_rewrite.pattern.regex = f"^{re.escape(prefix)}/*"
        action.regex_rewrite.substitution = "/"
    elif new != "/":  # the root prefix: /x -> /new/x
        action.regex_rewrite.pattern.regex = "^/"
        action.regex_rewrite.substitution = new + "/"


def _redirect(r: Redirect, match: RouteMatch | None) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=REDIRECT_CODES.get(r.status_code, rc.RedirectAction.FOUND))
    if r.scheme:
        out.scheme_redirect = r.scheme
    if r.hostname:
        out.host_redirect = r.hostname
    if r.port:
        out.port_redirect = r.port
    if r.path_full is not None:
        out.path_redirect = r.path_full
    elif r.path_prefix is not None:
        _prefix_rewrite(out, match, r.path_prefix)
    return out


def _action(ir: OutboundListener, route: HttpRoute, match: RouteMatch | None) -> rc.RouteAction:
    backends = route.backends
    if len(backends) > 1:
        action = rc.RouteAction(
            weighted_clusters=rc.WeightedCluster(
                clusters=[
                    rc.WeightedCluster.ClusterWeight(name=b.cluster, weight={"value": w})
                    for b, w in zip(backends, envoy_weights(backends), strict=True)
                ]
            )
        )
    else:
        action = rc.RouteAction(cluster=backends[0].cluster if backends else ir.cluster)
    if route.rewrite_full_path is not None:
        action.regex_rewrite.pattern.regex = "^.*$"
        action.regex_rewrite.substitution = route.rewrite_full_path
    elif route.rewrite_prefix is not None:
        _prefix_rewrite(action, match, route.rewrite_prefix)
    if route.rewrite_host is not None:
        action.host_rewrite_literal = route.rewrite_host
    elif route.rewrite_host_to_backend:
        action.auto_host_rewrite.value = True
    action.request_mirror_policies.extend(_mirror(m) for m in route.mirrors)
    timeouts.route(action, route.timeouts or ir.timeouts)
    retries.route(action, route.retry or ir.retry, ir.protocol)
    load_balancing.route(action, ir.lb)
    return action


def envoy_routes(ir: OutboundListener, route: HttpRoute) -> list[rc.Route]:
    """One Envoy route per match of ``route`` (a route without matches matches every request)."""
    out = []
    for match in route.matches or (None,):
        envoy = rc.Route(name=route.name, match=route_match(match) if match else rc.RouteMatch(prefix="/"))
        if route.stat_prefix:  # the route's own upstream_rq_* stats, counted on each request it takes
            envoy.stat_prefix = route.stat_prefix
        if route.redirect is not None:
            envoy.redirect.CopyFrom(_redirect(route.redirect, match))
        else:
            envoy.route.CopyFrom(_action(ir, route, match))
        if route.request_headers is not None:
            envoy.request_headers_to_add.extend(_headers_to_add(route.request_headers))
            envoy.request_headers_to_remove.extend(route.request_headers.remove)
        if route.response_headers is not None:
            envoy.response_headers_to_add.extend(_headers_to_add(route.response_headers))
            envoy.response_headers_to_remove.extend(route.response_headers.remove)
        out.append(envoy)
    return out


def _default_route(ir: OutboundListener) -> rc.Route:
    action = rc.RouteAction(cluster=ir.cluster)
    timeouts.route(action, ir.timeouts)
    retries.route(action, ir.retry, ir.protocol)
    load_balancing.route(action, ir.lb)
    return rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)


def route_configuration(ir: OutboundListener) -> route_pb2.RouteConfiguration:
    if ir.routes:
        routes = [r for route in ir.routes for r in envoy_routes(ir, route)]
    else:
        routes = [_default_route(ir)]
    return route_pb2.RouteConfiguration(
        name=ir.route_config,
        validate_clusters={"value": False},
        virtual_hosts=[rc.VirtualHost(name=ir.service, domains=["*"], routes=routes)],
    )


def tcp_proxy(stat_prefix: str, ir: OutboundListener) -> tcp_proxy_pb2.TcpProxy:
    backends = ir.tcp_backends
    if len(backends) > 1:
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=stat_prefix,
            weighted_clusters=tcp_proxy_pb2.TcpProxy.WeightedCluster(
                clusters=[
                    tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=b.cluster, weight=w)
                    for b, w in zip(backends, envoy_weights(backends), strict=True)
                ]
            ),
        )
    else:
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=stat_prefix, cluster=backends[0].cluster if backends else ir.cluster
        )
    timeouts.tcp_proxy(proxy, ir.timeouts)
    retries.tcp_proxy(proxy, ir.retry)
    return proxy
