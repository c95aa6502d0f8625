"""cors: Envoy's CORS filter with a per-route ``CorsPolicy`` from Kong's fields.

Origins as Kong reads them: ``*`` (or none) allows any origin, an origin made of URL characters only is compared
exactly, any other one is a regular expression of the whole origin. Approximations: Envoy answers the request's
Origin where Kong sends ``*``; with no ``headers`` Envoy allows ``*`` where Kong echoes the requested headers;
``preflight_continue`` is not supported yet.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

FILTER = "envoy.filters.http.cors"
_PLAIN_ORIGIN = re.compile(r"^[A-Za-z0-9.:/\-]+$")
Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("value must be greater than or equal to 0")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    origins: list[str] | None = None
    headers: list[str] | None = None
    exposed_headers: list[str] | None = None
    methods: list[Method] = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
    max_age: Annotated[float, AfterValidator(_non_negative)] | None = None
    credentials: bool = False
    private_network: bool = False
    preflight_continue: bool = False


def checks(config: Config) -> dict[str, str]:
    for origin in config.origins or ():
        if origin != "*" and not _PLAIN_ORIGIN.match(origin):
            try:
                re.compile(origin)
            except re.error:
                return {"origins": f"'{origin}' is not a valid regex"}
    if config.preflight_continue:
        return {"preflight_continue": "preflight_continue is not supported yet"}
    return {}


def _origin_matchers(origins: list[str] | None) -> list[dict[str, Any]]:
    if not origins or "*" in origins:
        return [{"safe_regex": {"regex": ".*"}}]
    return [{"exact": o} if _PLAIN_ORIGIN.match(o) else {"safe_regex": {"regex": o}} for o in origins]


def policy(config: Config) -> dict[str, Any]:
    """The route's ``CorsPolicy`` (Envoy's JSON names)."""
    out: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": _origin_matchers(config.origins),
        "allow_methods": ",".join(config.methods),
        "allow_headers": ",".join(config.headers) if config.headers else "*",
        "allow_credentials": config.credentials,
    }
    if config.exposed_headers:
        out["expose_headers"] = ",".join(config.exposed_headers)
    if config.max_age is not None:
        out["max_age"] = str(int(config.max_age))
    if config.private_network:
        out["allow_private_network_access"] = True
    return out


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    cors = policy(config)
    return [
        {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), FILTER: cors}}
        for r in routes
    ]


KIND = PluginKind(
    priority=2000,
    name="cors",
    config=Config,
    apply=apply,
    checks=checks,
    no_consumer=True,
    http_filters=(
        {
            "name": FILTER,
            # disabled by default: enabled by the CorsPolicy of the routes with the plugin
            "disabled": True,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        },
    ),
)
