"""ip-restriction: Kong's allow/deny lists of IPs and CIDR ranges (IPv4 and IPv6) for a route.

Envoy's RBAC filter (its own instance, ``kong.ip-restriction``) matches the client address (``remote_ip``: the
peer, or the X-Forwarded-For address when the gateway trusts proxies, as Kong's ``remote_addr``) with one shadow
DENY policy: in ``deny``, or not in a non-empty ``allow`` (so deny wins, as in Kong). A Lua filter right after it
answers a denied request with Kong's status and body: ``status`` (403) and ``{"message": ...}`` with ``message``
or Kong's ``IP address not allowed: <client address>``.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

FILTER = "kong.ip-restriction"
REPLY_FILTER = "kong.ip-restriction.reply"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
PREFIX = "kong_ip_restriction_"
DEFAULT_MESSAGE = "IP address not allowed"
_JSON = "application/json; charset=utf-8"

# Answers a request the shadow policy denied with the route's status and Kong's body.
REPLY_LUA = (
    """
function envoy_on_request(handle)
  local rbac = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.rbac")
  if rbac == nil or rbac["""
    + f'"{PREFIX}shadow_engine_result"'
    + """] ~= "denied" then return end
  local context = handle:filterContext()
  local body = context:get("body")
  if body == nil then
    local address = handle:streamInfo():downstreamRemoteAddress()
    local ip = string.match(address, "^%[(.*)%]:%d+$") or string.match(address, "^(.*):%d+$") or address
    body = context:get("head") .. ip .. context:get("tail")
  end
  handle:respond({[":status"] = context:get("status"), ["content-type"] = """
    + f'"{_JSON}"'
    + """}, body)
end
"""
)


def _ip_or_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid ip or cidr range: '{value}'") from None
    return value


IpOrCidr = Annotated[str, AfterValidator(_ip_or_cidr)]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: list[IpOrCidr] | None = None
    deny: list[IpOrCidr] | None = None
    status: float | None = None
    message: str | None = None


def checks(config: Config) -> dict[str, Any]:
    if not config.allow and not config.deny:
        return {"@entity": ["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]}
    if config.status is not None and (config.status != int(config.status) or not 400 <= config.status <= 599):
        return {"status": "a status other than an integer between 400 and 599 is not supported yet"}
    return {}


def _principal(value: str) -> dict[str, Any]:
    network = ipaddress.ip_network(value, strict=False)
    return {"remote_ip": {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}}


def _any_of(values: list[str]) -> dict[str, Any]:
    return {"or_ids": {"ids": [_principal(v) for v in values]}}


def policy(config: Config) -> dict[str, Any]:
    """The route's ``RBACPerRoute``: one shadow DENY policy (rules unset: the filter itself never answers)."""
    denied: list[dict[str, Any]] = []
    if config.deny:
        denied.append(_any_of(config.deny))
    if config.allow:
        denied.append({"not_id": _any_of(config.allow)})
    principal = denied[0] if len(denied) == 1 else {"or_ids": {"ids": denied}}
    rules = {"action": "DENY", "policies": {"ip-restriction": {"permissions": [{"any": True}], "principals": [principal]}}}  # fmt: skip
    return {"@type": _RBAC_PER_ROUTE, "rbac": {"shadow_rules": rules, "shadow_rules_stat_prefix": PREFIX}}


def reply(config: Config) -> dict[str, Any]:
    """The Lua reply's context: the status and the body (or its two halves around the client address)."""
    context: dict[str, Any] = {"status": str(int(config.status or 403))}
    if config.message is not None:
        context["body"] = json.dumps({"message": config.message}, indent=2) + "\n"
    else:
        head, _, tail = (json.dumps({"message": DEFAULT_MESSAGE + ": \x00"}, indent=2) + "\n").partition(
            "\\u0000"
        )
        context["head"], context["tail"] = head, tail
    return {"@type": _LUA_PER_ROUTE, "name": "reply", "filter_context": context}


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    rbac, lua = policy(config), reply(config)
    return [
        {
            **r,
            "typed_per_filter_config": {
                **r.get("typed_per_filter_config", {}),
                FILTER: rbac,
                REPLY_FILTER: lua,
            },
        }
        for r in routes
    ]


KIND = PluginKind(
    name="ip-restriction",
    priority=990,
    config=Config,
    apply=apply,
    checks=checks,
    http_filters=(
        {"name": FILTER, "disabled": True, "typed_config": {"@type": _RBAC}},
        {
            "name": REPLY_FILTER,
            "disabled": True,
            "typed_config": {
                "@type": _LUA,
                "source_codes": {"reply": {"inline_string": REPLY_LUA}},
                "clear_route_cache": False,
            },
        },
    ),
)
