"""Kong's authentication plugins (jwt, key-auth, basic-auth) and acl as native Envoy configuration.

Four HTTP filters on every gateway listener, in Kong's priority order:

* ``kong.auth.pre`` (Lua, static): on a route with the jwt plugin, passes Kong's one token to jwt_authn in an
  internal header (the consumer headers and that internal header are removed from every request before its
  route is chosen, natively, by the listeners' early header mutation: :data:`FORGEABLE_HEADERS`);
* ``kong.jwt`` (``envoy.filters.http.jwt_authn``, by ECDS): one provider per jwt credential (issuer = the
  credential's ``key``), ``allow_missing_or_failed``, so it only verifies signatures and records which
  credential verified the token; the Lua step decides 401 or anonymous;
* ``kong.auth`` (Lua, by ECDS): the workspace's consumers and credentials as one Lua table
  (:mod:`~isthmus.gateway.plugins.auth.consumers`) with jwt, key-auth and basic-auth in that order, Kong's
  ``anonymous`` (logical OR) composition, Kong's 401 bodies and ``WWW-Authenticate`` headers, then Kong's
  consumer headers; when the workspace has consumer-scoped plugin configurations it sets ``x-consumer-id`` and
  clears the route cache so that the consumer's own route copy is selected;
* ``kong.acl`` (Lua, static, priority 950): Kong's acl over the identified consumer's groups;
* ``kong.key.<n>`` (by ECDS): key-auth's common case without Lua when the key is good
  (:mod:`~isthmus.gateway.plugins.auth.native`), handing every other request to kong.auth's Lua.

The four filters are disabled by default and enabled by the routes whose plugins use them (``with_metadata``),
so a route without auth plugins runs no Lua.

Credentials travel by ECDS (Envoy's extension config discovery): a consumer or credential change updates those
two filter configurations only, never the listener (no drain) nor the routes. Each route carries only its plugin
configurations, as route metadata under the filter's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from isthmus.xds import types

EnvoyRoute = dict[str, Any]

PRE = "kong.auth.pre"
JWT = "kong.jwt"
AUTH = "kong.auth"
ACL = "kong.acl"
# the header kong.auth.pre hands the request's one JWT to jwt_authn in (removed from every client request)
JWT_HEADER = "x-isthmus-jwt"
EXTENSION_CONFIG = types.EXTENSION_CONFIG
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
JWT_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
# Kong's consumer headers (kong/constants.lua HEADERS); acl adds X-Consumer-Groups
# every header only the gateway may set, removed from each request before routing (a client can never forge a
# consumer; a forged X-Consumer-ID cannot select a consumer's route copy)
FORGEABLE_HEADERS = (
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-consumer-groups",
    "x-authenticated-groups",
    JWT_HEADER,
)
CONSUMER_HEADERS = (
    "X-Consumer-ID",
    "X-Consumer-Custom-ID",
    "X-Consumer-Username",
    "X-Credential-Identifier",
    "X-Anonymous-Consumer",
)


@cache
def lua(*names: str) -> str:
    """The concatenated Lua sources ``lua/<name>.lua``."""
    folder = resources.files(__package__).joinpath("lua")
    return "\n".join(folder.joinpath(f"{n}.lua").read_text(encoding="utf-8") for n in names)


# a route's ``typed_per_filter_config`` entry enabling a filter that is disabled by default (Envoy's FilterConfig
# with an empty ``config``: enabled, no per-route configuration)
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
ENABLED = {"@type": FILTER_CONFIG, "config": {}}


def _ecds(name: str, type_url: str) -> dict[str, Any]:
    return {
        "name": name,
        "disabled": True,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "type_urls": [type_url],
        },
    }


def _inline(name: str, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "disabled": True,
        "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": source}},
    }


def auth_filters() -> tuple[dict[str, Any], ...]:
    """The filters of the jwt/key-auth/basic-auth step (at jwt's priority, the highest of the three)."""
    from isthmus.gateway.plugins.auth import native

    return (
        _inline(PRE, lua("codec", "request", "pre")),
        _ecds(JWT, JWT_TYPE),
        _ecds(AUTH, LUA_TYPE),
        *native.http_filters(),
    )


def acl_filters() -> tuple[dict[str, Any], ...]:
    return (_inline(ACL, lua("codec", "request", "acl")),)


def with_metadata(routes: list[EnvoyRoute], namespace: str, key: str, value: Any) -> list[EnvoyRoute]:
    """``routes`` with ``value`` at ``metadata.filter_metadata[namespace][key]`` (read by that Lua filter's
    ``handle:metadata():get(key)``), and the filter ``namespace`` enabled there (every auth filter is disabled by
    default: a route without these plugins runs none of them)."""
    out = []
    for r in routes:
        metadata = dict(r.get("metadata") or {})
        filter_metadata = dict(metadata.get("filter_metadata") or {})
        filter_metadata[namespace] = {**(filter_metadata.get(namespace) or {}), key: value}
        changed = {**r, "metadata": {**metadata, "filter_metadata": filter_metadata}}
        per_filter = r.get("typed_per_filter_config") or {}
        if namespace not in per_filter:
            changed["typed_per_filter_config"] = {**per_filter, namespace: ENABLED}
        out.append(changed)
    return out


def extension_configs(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The ECDS resources (``TypedExtensionConfig`` dicts) of a workspace: jwt_authn's providers and the
    kong.auth Lua source with the consumers and credentials."""
    from isthmus.gateway.plugins.auth import consumers, jwt, native

    return [
        *native.extension_configs(entities),
        {"name": JWT, "typed_config": jwt.authentication(entities)},
        {
            "name": AUTH,
            "typed_config": {
                "@type": LUA_TYPE,
                "default_source_code": {"inline_string": consumers.lua_source(entities)},
            },
        },
    ]


def ref_id(value: Any) -> str | None:
    return str(value["id"]) if isinstance(value, Mapping) and value.get("id") else None


def enabled_plugins(
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]], name: str
) -> Sequence[Mapping[str, Any]]:
    return [
        p for p in entities.get("plugins", {}).values() if p.get("name") == name and p.get("enabled", True)
    ]
