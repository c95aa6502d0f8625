"""rate-limiting: Kong's request counts per second .. year, per consumer, credential, address, service, header or
path, as native Envoy configuration.

``policy: local``: Envoy's local rate limit filter per route, one token bucket per window and per client
(``limit_by`` consumer: the ``x-consumer-id`` the auth filter sets, else ``x-credential-identifier``, else the
client address; credential: ``x-credential-identifier``, else the address; header: the header's value, else the
address; path: the configured path, other paths by address; service: one bucket per route). Approximations: Envoy's
buckets refill continuously where Kong counts calendar-aligned fixed windows; a service-scoped configuration
counts per route; Kong's limit headers are Envoy's draft-03 ones renamed (natively by a header mutation for a
one-window limit; by a Lua script for several windows, where Envoy reports the tightest), ``RateLimit-Reset`` is
the seconds until Envoy's bucket gains a token (Kong: until its window ends) and a refusal's ``Retry-After`` the
longest such wait (window / limit); the 429 body is Kong's (a local reply mapper);
an ``error_code`` or ``error_message`` other than Kong's defaults is not supported yet with this policy.

``policy: redis``: Envoy's ``envoy.filters.http.ratelimit`` asks the rate-limit service the gateway agent runs
next to its Envoy (:mod:`isthmus.gateway.ratelimit_service`); the route's descriptor carries the plan (windows,
limits, Redis, the plugin's scope, Kong's answers) and the client's identifiers, so every gateway that shares a
Redis shares the counts, in Kong's keys, fixed calendar windows and headers. Not supported yet: ``policy:
cluster`` (Kong's database), ``redis.server_name``. ``sync_rate`` is accepted; counting is always synchronous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import pairwise
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind
from isthmus.gateway.ratelimit_service import plan as rl_plan
from isthmus.gateway.ratelimit_service.server import CLUSTER, STATUS_HEADER

FILTER = "envoy.filters.http.local_ratelimit"
REDIS_FILTER = "envoy.filters.http.ratelimit"
STATUS_FILTER = "isthmus.kong.rate_limiting_status"
HEADERS_FILTER = "isthmus.kong.rate_limiting_headers"
_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_MUTATION_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_REDIS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
_LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
DEFAULT_MESSAGE = rl_plan.DEFAULT_MESSAGE
WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "month": 2592000, "year": 31536000}
_CEL = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_UNLIMITED = (1 << 32) - 1
_ALL = {"numerator": 100, "denominator": "HUNDRED"}
CONSUMER_HEADER = "x-consumer-id"
CREDENTIAL_HEADER = "x-credential-identifier"
# the service answers within redis.timeout; this only bounds a service that does not answer at all
_SERVICE_TIMEOUT = "30s"
_MAX_TIMEOUT = 2**31 - 2
# Envoy's draft-03 headers of policy local as Kong's: ``windows`` (route context) is "Minute:5,Hour:100"; the
# per-window remainder is known for the window Envoy reports (the tightest), the first one with its limit.
# (no envoy_on_request: Envoy then skips the request side, no coroutine per request)
_HEADERS_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local limit = headers:get("x-ratelimit-limit")
  if limit == nil then
    return
  end
  local remaining = headers:get("x-ratelimit-remaining") or "0"
  local reset = headers:get("x-ratelimit-reset") or "1"
  if reset == "0" then
    reset = "1"
  end
  headers:remove("x-ratelimit-limit")
  headers:remove("x-ratelimit-remaining")
  headers:remove("x-ratelimit-reset")
  limit = string.match(limit, "%d+") or limit
  local named = false
  local windows = handle:filterContext():get("windows") or ""
  for window, value in string.gmatch(windows, "(%a+):(%d+)") do
    headers:add("X-RateLimit-Limit-" .. window, value)
    if value == limit and not named then
      headers:add("X-RateLimit-Remaining-" .. window, remaining)
      named = true
    end
  end
  headers:add("RateLimit-Limit", limit)
  headers:add("RateLimit-Remaining", remaining)
  headers:add("RateLimit-Reset", reset)
  if headers:get(":status") == "429" and remaining == "0" then
    headers:add("Retry-After", reset)
  end
end
"""
_STATUS_LUA = f"""
function envoy_on_response(handle)
  local headers = handle:headers()
  local status = headers:get("{STATUS_HEADER}")
  if status ~= nil then
    headers:remove("{STATUS_HEADER}")
    headers:replace(":status", status)
  end
end
"""


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("value must be greater than 0")
    return value


Limit = Annotated[float | None, AfterValidator(_positive)]
Port = Annotated[int, Field(ge=0, le=65535)]
Timeout = Annotated[int, Field(ge=0, le=_MAX_TIMEOUT)]


class RedisConfig(BaseModel):
    """Kong's ``config.redis`` record."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = None
    port: Port | None = 6379
    timeout: Timeout | None = 2000
    username: str | None = None
    password: str | None = None
    database: int | None = 0
    ssl: bool | None = False
    ssl_verify: bool | None = False
    server_name: str | None = None


# Kong 3.x's deprecated flat fields and the ``redis`` field each one sets
SHORTHANDS = {f"redis_{name}": name for name in RedisConfig.model_fields}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    second: Limit = None
    minute: Limit = None
    hour: Limit = None
    day: Limit = None
    month: Limit = None
    year: Limit = None
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path"] = "consumer"
    header_name: str | None = None
    path: str | None = None
    policy: Literal["local", "cluster", "redis"] = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: Annotated[float, Field(gt=0)] = 429
    error_message: str = DEFAULT_MESSAGE
    sync_rate: float | None = -1
    redis: RedisConfig | None = None
    redis_host: str | None = None
    redis_port: Port | None = None
    redis_timeout: Timeout | None = None
    redis_username: str | None = None
    redis_password: str | None = None
    redis_database: int | None = None
    redis_ssl: bool | None = None
    redis_ssl_verify: bool | None = None
    redis_server_name: str | None = None

    def redis_settings(self) -> RedisConfig:
        """``redis`` with the deprecated flat fields given laid over it, as Kong's shorthands do."""
        given = {
            field: getattr(self, flat)
            for flat, field in SHORTHANDS.items()
            if getattr(self, flat) is not None
        }
        return (self.redis or RedisConfig()).model_copy(update=given)


def checks(config: Config) -> dict[str, Any]:
    limits = [(w, getattr(config, w)) for w in WINDOWS if getattr(config, w) is not None]
    if not limits:
        names = ", ".join(f"'config.{w}'" for w in WINDOWS)
        return {"@entity": [f"at least one of these fields must be non-empty: {names}"]}
    for (short, low), (long, high) in pairwise(limits):
        if high < low:
            return {
                long: f"The limit for {long}({high:g}) cannot be lower than the limit for {short}({low:g})"
            }
    if config.limit_by == "header" and not config.header_name:
        return {"header_name": "required field missing"}
    if config.limit_by == "path" and not config.path:
        return {"path": "required field missing"}
    if config.policy == "cluster":
        return {"policy": "policy 'cluster' is not supported yet"}
    if config.policy == "redis":
        redis = config.redis_settings()
        if not redis.host:
            return {"redis": {"host": "required field missing"}}
        if redis.server_name:
            return {"redis": {"server_name": "redis.server_name is not supported yet"}}
        return {}
    if config.error_code != 429:
        return {"error_code": "an error_code other than 429 is not supported yet with policy 'local'"}
    if config.error_message != DEFAULT_MESSAGE:
        return {
            "error_message": "an error_message other than Kong's default is not supported yet with policy 'local'"
        }
    return {}


# -- policy local ------------------------------------------------------------------------------------------------


def _absent(*headers: str) -> dict[str, Any]:
    """An action adding the entry ``kong_absent: <names>`` when none of ``headers`` is in the request."""
    matchers = [{"name": h, "present_match": True, "invert_match": True} for h in headers]
    return {
        "header_value_match": {
            "descriptor_key": "kong_absent",
            "descriptor_value": ",".join(headers),
            "expect_match": True,
            "headers": matchers,
        }
    }


def _path_matcher(path: str) -> dict[str, Any]:
    return {"name": ":path", "string_match": {"safe_regex": {"regex": re.escape(path) + r"(\?.*)?"}}}


def _alternatives(config: Config) -> list[tuple[list[dict[str, Any]], list[dict[str, str]]]]:
    """Kong's identifier as mutually exclusive (actions, descriptor entries) pairs: the first present identifier,
    else the client address. An entry with an empty value is one bucket per distinct value."""
    address: tuple[dict[str, Any], dict[str, str]] = (
        {"remote_address": {}},
        {"key": "remote_address", "value": ""},
    )
    if config.limit_by == "service":
        return [([], [])]
    if config.limit_by == "ip":
        return [([address[0]], [address[1]])]
    if config.limit_by == "path" and config.path:
        match = {"header_value_match": {"descriptor_key": "kong_path", "descriptor_value": config.path, "expect_match": True, "headers": [_path_matcher(config.path)]}}  # fmt: skip
        other = {"header_value_match": {"descriptor_key": "kong_other_path", "descriptor_value": "1", "expect_match": False, "headers": [_path_matcher(config.path)]}}  # fmt: skip
        return [
            ([match], [{"key": "kong_path", "value": config.path}]),
            ([other, address[0]], [{"key": "kong_other_path", "value": "1"}, address[1]]),
        ]
    if config.limit_by == "consumer":
        headers = [CONSUMER_HEADER, CREDENTIAL_HEADER]
    elif config.limit_by == "credential":
        headers = [CREDENTIAL_HEADER]
    else:
        headers = [(config.header_name or "").lower()]
    out: list[tuple[list[dict[str, Any]], list[dict[str, str]]]] = []
    for i, header in enumerate(headers):
        key = f"kong_by_{header}"
        actions: list[dict[str, Any]] = [_absent(*headers[:i])] if i else []
        entries = [{"key": "kong_absent", "value": ",".join(headers[:i])}] if i else []
        actions.append({"request_headers": {"header_name": header, "descriptor_key": key}})
        entries.append({"key": key, "value": ""})
        out.append((actions, entries))
    out.append(
        ([_absent(*headers), address[0]], [{"key": "kong_absent", "value": ",".join(headers)}, address[1]])
    )
    return out


def policy(config: Config) -> dict[str, Any]:
    """The route's ``LocalRateLimit``."""
    rate_limits = []
    descriptors = []
    for window, seconds in WINDOWS.items():
        limit = getattr(config, window)
        if limit is None:
            continue
        tokens = max(1, int(limit))
        bucket = {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": f"{seconds}s"}
        head = {"generic_key": {"descriptor_key": "kong_window", "descriptor_value": window}}
        for actions, entries in _alternatives(config):
            rate_limits.append({"actions": [head, *actions]})
            descriptors.append(
                {"entries": [{"key": "kong_window", "value": window}, *entries], "token_bucket": bucket}
            )
    out: dict[str, Any] = {
        "@type": _TYPE,
        "stat_prefix": "kong_rate_limiting",
        "status": {"code": 429},
        # Envoy needs a route-wide bucket: one that never runs out, used only by requests no descriptor matches
        "token_bucket": {"max_tokens": _UNLIMITED, "tokens_per_fill": _UNLIMITED, "fill_interval": "1s"},
        "always_consume_default_token_bucket": False,
        "filter_enabled": {"runtime_key": "kong_rate_limiting_enabled", "default_value": _ALL},
        "filter_enforced": {"runtime_key": "kong_rate_limiting_enforced", "default_value": _ALL},
        "rate_limits": rate_limits,
        "descriptors": descriptors,
        "max_dynamic_descriptors": 100_000,
    }
    if not config.hide_client_headers:
        out["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    return out


# -- policy redis ------------------------------------------------------------------------------------------------

_SERVICE_CLUSTER = re.compile(r"kong:[^:]*:service:(.+)")


def route_service(route: EnvoyRoute) -> str | None:
    """The Kong Service id an Envoy route proxies to (its cluster's; a mesh service's name)."""
    cluster = str(route.get("route", {}).get("cluster") or "")
    found = _SERVICE_CLUSTER.fullmatch(cluster)
    return found.group(1) if found else (cluster or None)


def plan(config: Config, scope: Mapping[str, str | None], service_id: str | None) -> rl_plan.Plan:
    redis = config.redis_settings()
    return rl_plan.Plan(
        limits=tuple((w, float(getattr(config, w))) for w in WINDOWS if getattr(config, w) is not None),
        redis=rl_plan.RedisTarget(
            host=redis.host or "",
            port=6379 if redis.port is None else redis.port,
            username=redis.username,
            password=redis.password,
            database=redis.database or 0,
            timeout_ms=2000 if redis.timeout is None else redis.timeout,
            ssl=bool(redis.ssl),
            ssl_verify=bool(redis.ssl_verify),
        ),
        limit_by=config.limit_by,
        header_name=config.header_name,
        path=config.path,
        route_id=scope.get("route_id"),
        service_id=scope.get("service_id"),
        request_service_id=service_id,
        fault_tolerant=config.fault_tolerant,
        hide_client_headers=config.hide_client_headers,
        error_code=int(config.error_code),
        error_message=config.error_message,
    )


def redis_actions(config: Config, encoded_plan: str) -> list[dict[str, Any]]:
    """The route's rate-limit actions: the plan, then every identifier the request has (the service picks)."""
    actions: list[dict[str, Any]] = [
        {"generic_key": {"descriptor_key": rl_plan.PLAN_KEY, "descriptor_value": encoded_plan}}
    ]
    headers: list[tuple[str, str]] = []
    if config.limit_by == "consumer":
        headers = [(CONSUMER_HEADER, rl_plan.CONSUMER_KEY), (CREDENTIAL_HEADER, rl_plan.CREDENTIAL_KEY)]
    elif config.limit_by == "credential":
        headers = [(CREDENTIAL_HEADER, rl_plan.CREDENTIAL_KEY)]
    elif config.limit_by == "header" and config.header_name:
        headers = [(config.header_name.lower(), rl_plan.HEADER_KEY)]
    elif config.limit_by == "path":
        headers = [(":path", rl_plan.PATH_KEY)]
    for header, key in headers:
        actions.append(
            {"request_headers": {"header_name": header, "descriptor_key": key, "skip_if_absent": True}}
        )
    actions.append({"remote_address": {}})
    return actions


def _apply_redis(config: Config, scope: Any, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    out = []
    for r in routes:
        if "route" not in r:
            out.append(r)
            continue
        encoded = plan(config, scope, route_service(r)).encode()
        rate_limits = [{"actions": redis_actions(config, encoded)}]
        changed = {**r, "route": {**r["route"], "rate_limits": rate_limits}}
        # the filter is disabled by default (routes without the plugin do not run it): enabled here
        per_route = {**r.get("typed_per_filter_config", {}), REDIS_FILTER: _FILTER_ENABLED}
        if config.error_code != 429 or not config.fault_tolerant:  # answers other than 429: the status filter
            per_route[STATUS_FILTER] = _ENABLED
        changed["typed_per_filter_config"] = per_route
        out.append(changed)
    return out


# -- both --------------------------------------------------------------------------------------------------------


def scoped_apply(config: Config, scope: Any, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    if config.policy == "redis":
        return _apply_redis(config, scope, routes)
    return apply(config, routes)


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    if config.policy == "redis":
        return _apply_redis(config, {}, routes)
    per_route: dict[str, Any] = {FILTER: policy(config)}
    windows = [w for w in WINDOWS if getattr(config, w) is not None]
    if not config.hide_client_headers and len(windows) == 1:
        window, limit = windows[0], max(1, int(getattr(config, windows[0])))
        per_route[HEADERS_FILTER] = _renamed_headers(window, limit)
        # Retry-After on refusals only (evaluated when Envoy refuses, never on other requests)
        per_route[FILTER]["response_headers_to_add"] = [
            {"header": {"key": "Retry-After", "value": str(-(-WINDOWS[window] // limit))}}
        ]
    elif not config.hide_client_headers:
        per_route[STATUS_FILTER] = _kong_headers(config)
    return [
        {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), **per_route}}
        if "route" in r
        else r
        for r in routes
    ]


# the three filters are disabled by default: a route without the plugin runs none of them (a route's own
# configuration of a filter enables it there)
_FILTER_ENABLED = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
REDIS_HTTP_FILTER = {
    "name": REDIS_FILTER,
    "disabled": True,
    "typed_config": {
        "@type": _REDIS_TYPE,
        "domain": rl_plan.DOMAIN,
        "stat_prefix": "kong_rate_limiting_redis",
        "timeout": _SERVICE_TIMEOUT,
        "failure_mode_deny": False,
        "disable_x_envoy_ratelimited_header": True,
        "rate_limit_service": {
            "grpc_service": {"envoy_grpc": {"cluster_name": CLUSTER}},
            "transport_api_version": "V3",
        },
    },
}
# the script runs only on the routes that name it (no default code: elsewhere the filter does nothing)
_ENABLED = {"@type": _LUA_PER_ROUTE, "name": "kong-rate-limiting-status"}


def _kong_headers(config: Config) -> dict[str, Any]:
    """The headers script for a route with policy local, given its windows and limits."""
    windows = ",".join(
        f"{w.capitalize()}:{max(1, int(getattr(config, w)))}"
        for w in WINDOWS
        if getattr(config, w) is not None
    )
    return {
        "@type": _LUA_PER_ROUTE,
        "name": "kong-rate-limiting-headers",
        "filter_context": {"windows": windows},
    }


def _renamed_headers(window: str, limit: int) -> dict[str, Any]:
    """Envoy's draft-03 headers of a one-window limit under Kong's names, natively (no Lua on the path)."""

    def add(name: str, value: str) -> dict[str, Any]:
        return {
            "append": {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        }

    title = window.capitalize()
    remaining = "%RESP(x-ratelimit-remaining)%"
    return {
        "@type": _MUTATION_PER_ROUTE,
        "mutations": {
            "response_mutations": [
                add(f"X-RateLimit-Limit-{title}", str(limit)),
                add(f"X-RateLimit-Remaining-{title}", remaining),
                add("RateLimit-Limit", str(limit)),
                add("RateLimit-Remaining", remaining),
                add("RateLimit-Reset", "%RESP(x-ratelimit-reset)%"),
                {"remove": "x-ratelimit-limit"},
                {"remove": "x-ratelimit-remaining"},
                {"remove": "x-ratelimit-reset"},
            ]
        },
    }


HEADERS_HTTP_FILTER = {
    "name": HEADERS_FILTER,
    "disabled": True,
    "typed_config": {"@type": _MUTATION},
}

STATUS_HTTP_FILTER = {
    "name": STATUS_FILTER,
    "disabled": True,
    "typed_config": {
        "@type": _LUA_TYPE,
        "source_codes": {
            "kong-rate-limiting-status": {"inline_string": _STATUS_LUA},
            "kong-rate-limiting-headers": {"inline_string": _HEADERS_LUA},
        },
    },
}

KIND = PluginKind(
    name="rate-limiting",
    priority=910,
    config=Config,
    apply=apply,
    scoped_apply=scoped_apply,
    checks=checks,
    http_filters=(
        # before the rate limit filters, so that it sees their answers: a refusal's status other than 429
        STATUS_HTTP_FILTER,
        HEADERS_HTTP_FILTER,
        {
            "name": FILTER,
            "disabled": True,
            "typed_config": {"@type": _TYPE, "stat_prefix": "kong_rate_limiting"},
        },
        REDIS_HTTP_FILTER,
    ),
    # Kong's 429 body for Envoy's rate-limited local replies
    local_replies=(
        {
            "filter": {
                "extension_filter": {
                    "name": "envoy.access_loggers.extension_filters.cel",
                    "typed_config": {
                        "@type": _CEL,
                        "expression": "response.code_details == 'local_rate_limited'",
                    },
                }
            },
            "body_format_override": {
                "json_format": {"message": DEFAULT_MESSAGE},
                "content_type": "application/json; charset=utf-8",
            },
        },
    ),
)
