"""rate-limiting with ``policy: local``: Envoy's local rate limit filter per route, one token bucket per window
(``second`` .. ``year``) and per client address (``limit_by`` ip, and consumer/credential, which fall back to the
client address as Kong does without a consumer), or per route (``service``) or per header value (``header``).

Approximations: Envoy's buckets refill continuously where Kong counts calendar-aligned fixed windows; a
service-scoped configuration counts per route; the limit headers are Envoy's ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (draft 03), not Kong's per-window names; a request without the
``limit_by: header`` header is not limited (Kong counts it by address). The 429 body is Kong's
(a local reply mapper on every gateway listener rewrites the rate limit filter's answers). Not supported yet: ``policy`` cluster and
redis, ``limit_by: path``, an ``error_code`` or ``error_message`` other than Kong's defaults.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

FILTER = "envoy.filters.http.local_ratelimit"
_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
DEFAULT_MESSAGE = "API rate limit exceeded"
WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "month": 2592000, "year": 31536000}
_CEL = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_UNLIMITED = (1 << 32) - 1
_ALL = {"numerator": 100, "denominator": "HUNDRED"}


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("value must be greater than 0")
    return value


Limit = Annotated[float | None, AfterValidator(_positive)]


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
    error_code: int = 429
    error_message: str = DEFAULT_MESSAGE
    sync_rate: float = -1
    redis: dict[str, Any] | None = None


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
    if config.policy != "local":
        return {"policy": f"policy '{config.policy}' is not supported yet"}
    if config.limit_by == "path":
        return {"limit_by": "limit_by 'path' is not supported yet"}
    if config.limit_by == "header" and not config.header_name:
        return {"header_name": "required field missing"}
    if config.error_code != 429:
        return {"error_code": "an error_code other than 429 is not supported yet"}
    if config.error_message != DEFAULT_MESSAGE:
        return {"error_message": "an error_message other than Kong's default is not supported yet"}
    return {}


def _identifier(config: Config) -> tuple[dict[str, Any] | None, str]:
    """The rate limit action that tells clients apart and its descriptor key (None: one bucket per route)."""
    if config.limit_by == "service":
        return None, ""
    if config.limit_by == "header" and config.header_name:
        action = {
            "request_headers": {"header_name": config.header_name.lower(), "descriptor_key": "kong_header"}
        }
        return action, "kong_header"
    return {"remote_address": {}}, "remote_address"


def policy(config: Config) -> dict[str, Any]:
    """The route's ``LocalRateLimit``."""
    action, key = _identifier(config)
    rate_limits = []
    descriptors = []
    for window, seconds in WINDOWS.items():
        limit = getattr(config, window)
        if limit is None:
            continue
        tokens = max(1, int(limit))
        actions: list[dict[str, Any]] = [
            {"generic_key": {"descriptor_key": "kong_window", "descriptor_value": window}}
        ]
        entries: list[dict[str, Any]] = [{"key": "kong_window", "value": window}]
        if action is not None:
            actions.append(action)
            entries.append({"key": key, "value": ""})  # empty: one bucket per distinct value
        rate_limits.append({"actions": actions})
        bucket = {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": f"{seconds}s"}
        descriptors.append({"entries": entries, "token_bucket": bucket})
    out: dict[str, Any] = {
        "@type": _TYPE,
        "stat_prefix": "kong_rate_limiting",
        "status": {"code": config.error_code},
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


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    limit = policy(config)
    return [
        {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), FILTER: limit}}
        if "route" in r
        else r
        for r in routes
    ]


KIND = PluginKind(
    name="rate-limiting",
    priority=910,
    config=Config,
    apply=apply,
    checks=checks,
    http_filters=({"name": FILTER, "typed_config": {"@type": _TYPE, "stat_prefix": "kong_rate_limiting"}},),
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
