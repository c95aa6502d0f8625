"""acl (PRIORITY 950): the identified consumer's groups (acl credentials) against ``allow`` or ``deny``; Kong's
403 ``You cannot consume this service`` and 401 ``Unauthorized`` (no consumer, or an anonymous one without
groups); ``X-Consumer-Groups`` (the groups joined by ``, ``) unless ``hide_groups_header``. The kong.acl Lua filter
(:mod:`isthmus.gateway.plugins.auth`). ``always_use_authenticated_groups`` is accepted: Isthmus has no plugin
that authenticates groups (Kong's ldap-auth / openid-connect), so the consumer's groups always apply, as in Kong
without them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, auth


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: list[str] | None = None
    deny: list[str] | None = None
    hide_groups_header: bool = False
    always_use_authenticated_groups: bool = False
    include_consumer_groups: bool = False  # Kong Enterprise


def checks(config: Config) -> dict[str, Any]:
    if config.include_consumer_groups:
        return {"include_consumer_groups": "include_consumer_groups (consumer groups) is not supported yet"}
    return _kong_checks(config)


def _kong_checks(config: Config) -> dict[str, Any]:
    if config.allow and config.deny:
        return {"@entity": ["only one of these fields must be non-empty: 'config.allow', 'config.deny'"]}
    if not config.allow and not config.deny:
        return {"@entity": ["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]}
    return {}


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    routes = auth.with_metadata(routes, auth.ACL, "acl", config.model_dump())
    # tells kong.auth to record the consumer for kong.acl (dynamic metadata, written only where acl reads it)
    return auth.with_metadata(routes, auth.AUTH, "acl", True)


KIND = PluginKind(
    name="acl",
    priority=950,
    config=Config,
    apply=apply,
    checks=checks,
    no_consumer=True,
    http_filters=auth.acl_filters(),
)
