"""correlation-id: a request without ``header_name`` gets one (kept when the client sent it), sent upstream and,
with ``echo_downstream``, in the response (route ``request_headers_to_add`` / ``response_headers_to_add``).

Every generator makes a fresh UUID per request (Envoy's ``%UNIQUE_ID%``); Kong's ``uuid#counter`` and ``tracker``
formats are approximated by it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind

_HEADER = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"


def _header_name(value: str) -> str:
    import re

    if not re.match(_HEADER, value):
        raise ValueError(f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header_name: Annotated[str, AfterValidator(_header_name)] = "Kong-Request-ID"
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    name = config.header_name.lower()
    request = {"header": {"key": name, "value": "%UNIQUE_ID%"}, "append_action": "ADD_IF_ABSENT"}
    response = {
        "header": {"key": name, "value": f"%REQ({name})%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }
    out = []
    for r in routes:
        r = {**r, "request_headers_to_add": [*r.get("request_headers_to_add", []), request]}
        if config.echo_downstream:
            r["response_headers_to_add"] = [*r.get("response_headers_to_add", []), response]
        out.append(r)
    return out


KIND = PluginKind(priority=100001, name="correlation-id", config=Config, apply=apply)
