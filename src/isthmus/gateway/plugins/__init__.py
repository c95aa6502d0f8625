"""Kong plugins as native Envoy configuration: a registry of the implemented plugins and Kong's scoping.

Each plugin is one module with a pydantic ``Config`` (Kong's config fields, defaults and checks) and a
:class:`PluginKind`: the HCM filters it needs (placed before the router on every gateway listener, ``disabled``
by default: a route's own configuration of a filter enables it there, so a route runs only its plugins' filters) and a function that changes the Envoy routes of one Kong route (its
``typed_per_filter_config``, or a ``direct_response``). For each plugin name exactly one configuration applies to
a Kong route, the most specific one, as Kong's ``plugins_iterator``: route+service+consumer > route+consumer >
service+consumer > route+service > consumer > route > service > global. Consumer-scoped configurations apply to
the consumer the auth plugins identify (:mod:`isthmus.gateway.plugins.auth`): the RouteConfiguration has, before a
Kong route's Envoy routes, a copy for each consumer whose effective plugins differ, matching ``x-consumer-id``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from isthmus.xds import types

EnvoyRoute = dict[str, Any]
EXTENSION_CONFIG = types.EXTENSION_CONFIG


@dataclass(frozen=True)
class PluginKind:
    name: str
    priority: int  # Kong's PRIORITY: a higher one runs first, so it is applied last (its effect outermost)
    config: type[BaseModel]
    # the Envoy routes of one Kong route -> those routes with the plugin applied
    apply: Callable[[Any, list[EnvoyRoute]], list[EnvoyRoute]]
    http_filters: tuple[dict[str, Any], ...] = ()
    # Kong's schema refuses a consumer-scoped configuration (``consumer = typedefs.no_consumer``)
    no_consumer: bool = False
    # HCM local reply mappers (Kong's bodies for Envoy's own answers)
    local_replies: tuple[dict[str, Any], ...] = ()
    # Kong's entity checks across config fields: field -> message
    checks: Callable[[Any], dict[str, str]] | None = None
    # instead of ``apply``, for a plugin that keys state on its scope (Kong's ``conf.route_id``/``conf.service_id``):
    # (config, {"route_id": ..., "service_id": ...}, routes) -> routes
    scoped_apply: Callable[[Any, Mapping[str, str | None], list[EnvoyRoute]], list[EnvoyRoute]] | None = None
    # instead of ``apply``, for a plugin that records which Kong route it served (logging, metrics, tracing):
    # (config, {"workspace", "route_id", "route_name", "service_id", "service_name"}, routes) -> routes
    identified_apply: Callable[[Any, Mapping[str, str | None], list[EnvoyRoute]], list[EnvoyRoute]] | None = (
        None
    )


def _registry() -> dict[str, PluginKind]:
    from isthmus.gateway.plugins import (
        correlation_id,
        cors,
        file_log,
        http_log,
        ip_restriction,
        opentelemetry,
        prometheus,
        proxy_cache,
        rate_limiting,
        request_size_limiting,
        request_termination,
        request_transformer,
        response_transformer,
        tcp_log,
        zipkin,
    )
    from isthmus.gateway.plugins.auth import acl, basic_auth, jwt, key_auth

    kinds = (
        acl.KIND,
        basic_auth.KIND,
        jwt.KIND,
        key_auth.KIND,
        correlation_id.KIND,
        cors.KIND,
        rate_limiting.KIND,
        request_size_limiting.KIND,
        request_termination.KIND,
        ip_restriction.KIND,
        proxy_cache.KIND,
        request_transformer.KIND,
        response_transformer.KIND,
        file_log.KIND,
        http_log.KIND,
        tcp_log.KIND,
        prometheus.KIND,
        opentelemetry.KIND,
        zipkin.KIND,
    )
    return {k.name: k for k in sorted(kinds, key=lambda k: -k.priority)}


_KINDS: dict[str, PluginKind] = {}


def kinds() -> dict[str, PluginKind]:
    """The implemented plugins by name."""
    if not _KINDS:
        _KINDS.update(_registry())
    return _KINDS


def http_filters() -> list[dict[str, Any]]:
    """The HCM filters of every implemented plugin, in Kong's execution order (before the router)."""
    return [f for kind in kinds().values() for f in kind.http_filters]


def local_replies() -> list[dict[str, Any]]:
    """The HCM's local reply mappers of every implemented plugin."""
    return [m for kind in kinds().values() for m in kind.local_replies]


def config_errors(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Kong's schema-violation fields for a plugin's ``config`` (``{}`` when valid)."""
    from isthmus.gateway.entities import pydantic_fields

    kind = kinds()[name]
    try:
        parsed = kind.config.model_validate(dict(config))
    except ValidationError as exc:
        return {"config": pydantic_fields(exc)}
    problems = kind.checks(parsed) if kind.checks else {}
    return {"config": problems} if problems else {}


def _ref(value: Any) -> str | None:
    return str(value["id"]) if isinstance(value, Mapping) and value.get("id") else None


Scope = tuple[str | None, str | None, str | None]  # (route id, service id, consumer id)


class Scopes:
    """A workspace's enabled, implemented plugins indexed by (route id, service id, consumer id) scope."""

    def __init__(self, plugins: Mapping[str, Mapping[str, Any]]) -> None:
        self._by_scope: dict[Scope, dict[str, Mapping[str, Any]]] = {}
        # (route id, service id) scope -> the consumers with consumer-scoped configurations there
        self._consumers: dict[tuple[str | None, str | None], set[str]] = {}
        for plugin in plugins.values():
            if not plugin.get("enabled", True) or plugin.get("name") not in kinds():
                continue
            scope = (_ref(plugin.get("route")), _ref(plugin.get("service")), _ref(plugin.get("consumer")))
            self._by_scope.setdefault(scope, {})[str(plugin["name"])] = plugin
            if scope[2] is not None:
                self._consumers.setdefault(scope[:2], set()).add(scope[2])

    def effective(
        self, route_id: str, service_id: str | None, consumer_id: str | None = None
    ) -> dict[str, Mapping[str, Any]]:
        """Plugin name -> the plugin entity that applies to the route (for that consumer), by Kong's precedence."""
        r, s, c = route_id, service_id, consumer_id
        out: dict[str, Mapping[str, Any]] = {}
        # least specific first: a more specific scope overwrites (plugins_iterator's order, reversed)
        order: tuple[Scope, ...] = ((None, None, None), (None, s, None), (r, None, None))
        if c is not None:
            order += ((None, None, c), (r, s, None), (None, s, c), (r, None, c), (r, s, c))
        else:
            order += ((r, s, None),)
        for scope in order:
            out.update(self._by_scope.get(scope, {}))
        return dict(sorted(out.items()))

    def consumers(self, route_id: str, service_id: str | None) -> list[str]:
        """The consumers with consumer-scoped configurations that can reach the route."""
        found: set[str] = set()
        for scope in ((None, None), (None, service_id), (route_id, None), (route_id, service_id)):
            found |= self._consumers.get(scope, set())
        return sorted(found)


def effective(
    plugins: Mapping[str, Mapping[str, Any]], route_id: str, service_id: str | None
) -> dict[str, Mapping[str, Any]]:
    """Plugin name -> the plugin entity that applies to the route (Kong's precedence; enabled ones only)."""
    return Scopes(plugins).effective(route_id, service_id)


def extension_configs(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The ECDS resources (``TypedExtensionConfig`` dicts) the gateway's HTTP filters name."""
    from isthmus.gateway.plugins import auth

    return auth.extension_configs(entities)


def apply(
    plugins: Mapping[str, Mapping[str, Any]],
    routes: list[EnvoyRoute],
    identity: Mapping[str, str | None] | None = None,
) -> list[EnvoyRoute]:
    """The Envoy routes of one Kong route with its effective plugins applied (``effective``'s result), the lowest
    Kong priority first: a request-size-limiting 413 comes before a request-termination, as in Kong."""
    for name, plugin in sorted(plugins.items(), key=lambda item: kinds()[item[0]].priority):
        kind = kinds()[name]
        config = kind.config.model_validate(plugin.get("config") or {})
        if kind.scoped_apply is not None:
            scope = {"route_id": _ref(plugin.get("route")), "service_id": _ref(plugin.get("service"))}
            routes = kind.scoped_apply(config, scope, routes)
        elif kind.identified_apply is not None:
            routes = kind.identified_apply(config, identity or {}, routes)
        else:
            routes = kind.apply(config, routes)
    if "key-auth" in plugins:
        from isthmus.gateway.plugins.auth import native

        routes = native.native_routes(routes)
    return routes
