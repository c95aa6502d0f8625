"""proxy-cache with ``strategy: memory``: Kong's cache as a Lua filter (``kong.proxy-cache``) of the gateway
Envoy, enabled per route with the plugin's configuration as its ``filter_context``.

Envoy's own cache filters do not fit: on a miss they fetch the response with an async client straight to the
cluster, skipping the route's path and Host rewrites, retries and timeouts, and they follow RFC 7234 where Kong
decides alone. The Lua filter keeps Kong's behaviour:

* a request whose method is not in ``request_method`` (or, with ``cache_control``, with ``no-store``,
  ``no-cache`` or Authorization) is proxied as is: ``X-Cache-Status: Bypass``;
* Kong's key: route, consumer (``X-Consumer-ID``), method, path (lowercased with ``ignore_uri_case``), query
  arguments (sorted; only ``vary_query_params`` when set) and the ``vary_headers`` values, its SHA-256 as
  ``X-Cache-Key``;
* a cached, fresh entry is answered from memory (``Hit``, with ``Age``); a stale one (older than ``cache_ttl``,
  or by the request's max-age, max-stale or min-fresh with ``cache_control``) is ``Refresh``; otherwise ``Miss``;
* an upstream response is stored when its status is in ``response_code`` and its Content-Type is one of
  ``content_type`` (Kong's exact media type match) and, with ``cache_control``, it is not private, no-store or
  no-cache and has a TTL (s-maxage, max-age or Expires), for ``cache_ttl`` (or that TTL); otherwise ``Bypass``;
  entries live ``storage_ttl`` seconds when set.

Differences: the store is one per Envoy worker thread (the gateway runs one by default; Kong's is one per node)
holding at most 128 MiB, oldest entries evicted first; the key's route part is the Envoy route's name (Kong's
route id for an unnamed route); no Admin API purge endpoints.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind
from isthmus.gateway.plugins.proxy_cache_lua import SOURCE

FILTER = "kong.proxy-cache"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
DICTIONARY = "kong_db_cache"


def _status(value: int) -> int:
    if not 100 <= value <= 900:
        raise ValueError("value should be between 100 and 900")
    return value


def _positive(value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise ValueError("value must be greater than 0")
    return value


class _Memory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dictionary_name: str = DICTIONARY


class _ResponseHeaders(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    age: bool = True
    x_cache_status: bool = Field(default=True, alias="X-Cache-Status")
    x_cache_key: bool = Field(default=True, alias="X-Cache-Key")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_code: Annotated[list[Annotated[int, AfterValidator(_status)]], Field(min_length=1)] = [
        200,
        301,
        404,
    ]
    request_method: list[Literal["HEAD", "GET", "POST", "PATCH", "PUT"]] = ["GET", "HEAD"]
    content_type: list[str] = ["text/plain", "application/json"]
    cache_ttl: Annotated[int, AfterValidator(_positive)] = 300
    strategy: Literal["memory"]
    cache_control: bool = False
    ignore_uri_case: bool = False
    storage_ttl: int | None = None
    memory: _Memory = Field(default_factory=_Memory)
    vary_query_params: list[str] | None = None
    vary_headers: list[str] | None = None
    response_headers: _ResponseHeaders = Field(default_factory=_ResponseHeaders)


def checks(config: Config) -> dict[str, Any]:
    if config.memory.dictionary_name != DICTIONARY:  # the only shared dict of Kong's nginx template
        return {"@entity": [f"missing shared dict '{config.memory.dictionary_name}'"]}
    return {}


def media_type(value: str) -> str | None:
    """Kong's parsed media type as ``type/subtype|k=v;k=v`` (params sorted; ``*`` alone is ``*/*``), or None."""
    main, *params = (p.strip() for p in value.split(";"))
    if main == "*":
        main = "*/*"
    kind, slash, sub = main.partition("/")
    if not slash or not kind or not sub:
        return None
    pairs = []
    for param in params:
        key, eq, val = param.partition("=")
        if eq:
            pairs.append(f"{key.strip().lower()}={val.strip().strip(chr(34))}")
    return f"{kind.lower()}/{sub.lower()}|{';'.join(sorted(pairs))}"


def context(config: Config, route: str) -> dict[str, str]:
    """The Lua filter's per-route context (flags as "1"/"0", lists as lines)."""
    flags = {
        "cache_control": config.cache_control,
        "ignore_uri_case": config.ignore_uri_case,
        "age": config.response_headers.age,
        "status_header": config.response_headers.x_cache_status,
        "key_header": config.response_headers.x_cache_key,
    }
    out = {name: "1" if on else "0" for name, on in flags.items()}
    types = [t for t in (media_type(v) for v in config.content_type) if t is not None]
    out |= {
        "route": route,
        "methods": "," + ",".join(config.request_method) + ",",
        "codes": "," + ",".join(str(c) for c in config.response_code) + ",",
        "types": "".join(f"{t}\n" for t in types),
        "ttl": str(config.cache_ttl),
        "vary_query": "".join(f"{n}\n" for n in config.vary_query_params or ()),
        "vary_headers": "".join(f"{n}\n" for n in config.vary_headers or ()),
    }
    if config.storage_ttl is not None:
        out["storage_ttl"] = str(config.storage_ttl)
    return out


def route_identity(route: EnvoyRoute) -> str:
    """The key's route part: the Kong route's name or id (the Envoy route's name without its path)."""
    return str(route.get("name", "")).split(" ", 1)[0]


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    out = []
    for r in routes:
        per_route = {
            "@type": _LUA_PER_ROUTE,
            "name": "cache",
            "filter_context": context(config, route_identity(r)),
        }
        out.append(
            {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), FILTER: per_route}}
        )
    return out


KIND = PluginKind(
    name="proxy-cache",
    priority=100,
    config=Config,
    apply=apply,
    checks=checks,
    http_filters=(
        {
            "name": FILTER,
            "disabled": True,
            "typed_config": {
                "@type": _LUA,
                "source_codes": {"cache": {"inline_string": SOURCE}},
                "clear_route_cache": False,
            },
        },
    ),
)
