"""request-termination: the route answers ``status_code`` with Kong's body (a route ``direct_response``).

``body`` is sent as is with ``content_type``; otherwise Kong's error body ``{"message": ...}`` with ``message`` or
the status's default message (``kong.response.error``). ``echo`` and ``trigger`` are not supported yet.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

_JSON = "application/json; charset=utf-8"
# kong.response.error's default messages (kong/pdk/response.lua)
DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    411: "Length required",
    412: "Precondition failed",
    413: "Payload too large",
    414: "URI too long",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "An unexpected error occurred",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def _status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError("value should be between 100 and 599")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status_code: Annotated[int, AfterValidator(_status)] = 503
    message: str | None = None
    body: str | None = None
    content_type: str | None = None
    trigger: str | None = None
    echo: bool = False


def checks(config: Config) -> dict[str, str]:
    errors: dict[str, str] = {}
    if config.message is not None and (config.body is not None or config.content_type is not None):
        errors["message"] = "message cannot be used with content_type or body"
    if config.content_type is not None and config.body is None:
        errors["content_type"] = "content_type requires a body"
    if config.echo:
        errors["echo"] = "echo is not supported yet"
    if config.trigger is not None:
        errors["trigger"] = "trigger is not supported yet"
    return errors


def response(config: Config) -> tuple[str, str]:
    """(body, content type) the route answers."""
    if config.body is not None:
        return config.body, config.content_type or _JSON
    message = config.message or DEFAULT_MESSAGES.get(config.status_code, "")
    import json

    return json.dumps({"message": message}, indent=2) + "\n", _JSON


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    body, content_type = response(config)
    out = []
    for r in routes:
        rest: dict[str, Any] = {
            k: v for k, v in r.items() if k not in ("route", "redirect", "direct_response")
        }
        headers = [
            h for h in rest.get("response_headers_to_add", []) if h["header"]["key"].lower() != "content-type"
        ]
        headers.append(
            {
                "header": {"key": "content-type", "value": content_type},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        )
        rest["response_headers_to_add"] = headers
        rest["direct_response"] = {"status": config.status_code, "body": {"inline_string": body}}
        out.append(rest)
    return out


KIND = PluginKind(priority=2, name="request-termination", config=Config, apply=apply, checks=checks)
