"""request-size-limiting: Kong's 413 for a body larger than ``allowed_payload_size`` ``size_unit``s.

A request whose Content-Length is over the limit is answered by a route placed before the proxied one (a
``content-length`` range match with Kong's body, as Kong checks that header first); a body without a
Content-Length (chunked) is bounded by Envoy's buffer filter for that route (Envoy's own 413 body). With
``require_content_length`` a request without the header gets Kong's 411.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

FILTER = "envoy.filters.http.buffer"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
_JSON = "application/json; charset=utf-8"
TOO_LARGE = "Request size limit exceeded"
LENGTH_REQUIRED = "A valid Content-Length header is required"
UNITS = {"megabytes": 1 << 20, "kilobytes": 1 << 10, "bytes": 1}
_BUFFER_MAX = (1 << 32) - 1  # Envoy's max_request_bytes is a uint32


def _positive(value: int) -> int:
    if value < 0:
        raise ValueError("value must be greater than or equal to 0")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_payload_size: Annotated[int, AfterValidator(_positive)] = 128
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
    require_content_length: bool = False


def allowed_bytes(config: Config) -> int:
    return config.allowed_payload_size * UNITS[config.size_unit]


def _answer(r: EnvoyRoute, header: dict[str, Any], status: int, message: str) -> EnvoyRoute:
    match = {**r["match"], "headers": [*r["match"].get("headers", []), header]}
    rest = {k: v for k, v in r.items() if k not in ("route", "redirect", "direct_response", "match")}
    headers = [
        h for h in rest.get("response_headers_to_add", []) if h["header"]["key"].lower() != "content-type"
    ]
    headers.append(
        {"header": {"key": "content-type", "value": _JSON}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    )
    body = json.dumps({"message": message}, indent=2) + "\n"
    return {
        **rest,
        "match": match,
        "response_headers_to_add": headers,
        "direct_response": {"status": status, "body": {"inline_string": body}},
    }


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    limit = allowed_bytes(config)
    over = {"name": "content-length", "range_match": {"start": str(limit + 1), "end": str((1 << 63) - 1)}}
    absent = {"name": "content-length", "present_match": True, "invert_match": True}
    buffer = {"@type": _PER_ROUTE, "buffer": {"max_request_bytes": min(limit, _BUFFER_MAX)}}
    out: list[EnvoyRoute] = []
    for r in routes:
        out.append(_answer(r, over, 413, TOO_LARGE))
        if config.require_content_length:
            out.append(_answer(r, absent, 411, LENGTH_REQUIRED))
        if "route" in r:
            r = {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), FILTER: buffer}}
        out.append(r)
    return out


KIND = PluginKind(
    name="request-size-limiting",
    priority=951,
    config=Config,
    apply=apply,
    # off unless a route enables it (its BufferPerRoute)
    http_filters=(
        {
            "name": FILTER,
            "disabled": True,
            "typed_config": {"@type": _BUFFER, "max_request_bytes": _BUFFER_MAX},
        },
    ),
)
