"""response-transformer: Kong's response header edits as one ordered list of mutations (remove, rename, replace,
add, append, as Kong runs them) in a per-route ``HeaderMutationPerRoute`` of a header mutation filter of its own
(``kong.response-transformer``); it also edits Envoy's own answers (a request-termination, a 404), as Kong's
header filter does.

Kong's conditions map to Envoy's append actions: replace = ``OVERWRITE_IF_EXISTS``, add = ``ADD_IF_ABSENT``,
append = ``APPEND_IF_EXISTS_OR_ADD``; a rename copies ``%RESP(old)%`` (nothing when the header is absent) then
removes the old header. Known difference: Kong checks rename/replace/add against the headers as the upstream sent
them, Envoy against the headers as the earlier edits left them (they differ only when one configuration edits
the same header twice). The JSON body edits (``json``, typed by ``json_types``) are a Lua filter's
(``kong.response-transformer.lua``): on an ``application/json`` response whose body is a JSON object, Kong's
remove, rename, replace (a present, non-false name), add (an absent or false one) and append, then the body
re-encoded (names sorted; Content-Length removed, as Kong does); another body is passed unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, transform_lua
from isthmus.gateway.plugins.request_transformer import _colon_headers, _literal, _name_value

FILTER = "kong.response-transformer"
_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_MUTATION_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
LUA_FILTER = "kong.response-transformer.lua"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"


def _colon(value: str) -> str:
    if not re.match(r"^[^:]+:", value):
        raise ValueError(f"invalid value: {value}")
    return value


Colon = Annotated[str, AfterValidator(_colon)]
RenameHeader = Annotated[str, AfterValidator(_colon_headers)]


class _Remove(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: list[str] = Field(default_factory=list, alias="json")
    headers: list[str] = Field(default_factory=list)


class _Rename(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: list[Colon] = Field(default_factory=list, alias="json")
    headers: list[RenameHeader] = Field(default_factory=list)


class _Pairs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: list[Colon] = Field(default_factory=list, alias="json")
    json_types: list[Literal["boolean", "number", "string"]] = Field(default_factory=list)
    headers: list[Colon] = Field(default_factory=list)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remove: _Remove = Field(default_factory=_Remove)
    rename: _Rename = Field(default_factory=_Rename)
    replace: _Pairs = Field(default_factory=_Pairs)
    add: _Pairs = Field(default_factory=_Pairs)
    append: _Pairs = Field(default_factory=_Pairs)


def _typed(section: _Pairs) -> list[list[str | None]]:
    """(name, value, json type) of each ``json`` entry (Kong: the i-th json_types entry types the i-th value; an
    empty value is cjson's encoding of nil, the text "null")."""
    out: list[list[str | None]] = []
    for i, entry in enumerate(section.json_):
        name, value = _name_value(entry)
        kind = section.json_types[i] if i < len(section.json_types) else None
        out.append([name, value if value != "" else "null", kind])
    return out


def json_edits(config: Config) -> str | None:
    """The Lua filter's JSON body edits (JSON), or None when there are none."""
    sections = (config.remove, config.rename, config.replace, config.add, config.append)
    if not any(s.json_ for s in sections):
        return None
    edits = {
        "remove": config.remove.json_,
        "rename": [list(_name_value(e)) for e in config.rename.json_],
        "replace": _typed(config.replace),
        "add": _typed(config.add),
        "append": _typed(config.append),
    }
    return json.dumps(edits, separators=(",", ":"))


def _set(key: str, value: str, action: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action}}


def mutations(config: Config) -> list[dict[str, Any]]:
    """The response header mutations in Kong's order."""
    out: list[dict[str, Any]] = [{"remove": name.lower()} for name in config.remove.headers]
    for entry in config.rename.headers:
        old, new = (n.lower() for n in _name_value(entry))
        if old != new:
            out.append(_set(new, f"%RESP({old})%", "OVERWRITE_IF_EXISTS_OR_ADD"))
            out.append({"remove": old})
    # a pair without a value ("x-name:") is skipped, as Kong does
    for section, action in (
        (config.replace, "OVERWRITE_IF_EXISTS"),
        (config.add, "ADD_IF_ABSENT"),
        (config.append, "APPEND_IF_EXISTS_OR_ADD"),
    ):
        for entry in section.headers:
            name, value = _name_value(entry)
            if value:
                out.append(_set(name.lower(), _literal(value), action))
    return out


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    per_route: dict[str, Any] = {}
    edits = mutations(config)
    if edits:
        per_route[FILTER] = {"@type": _MUTATION_PER_ROUTE, "mutations": {"response_mutations": edits}}
    body = json_edits(config)
    if body is not None:
        per_route[LUA_FILTER] = {
            "@type": _LUA_PER_ROUTE,
            "name": "response",
            "filter_context": {"edits": body},
        }
    if not per_route:
        return routes
    return [
        {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), **per_route}}
        for r in routes
    ]


KIND = PluginKind(
    name="response-transformer",
    priority=800,
    config=Config,
    apply=apply,
    # responses pass the filters backwards: the header edits first, then the body's, as Kong's header and body
    # filters run
    http_filters=(
        {
            "name": LUA_FILTER,
            "disabled": True,
            "typed_config": {
                "@type": _LUA,
                "source_codes": {"response": {"inline_string": transform_lua.RESPONSE}},
                # never another route for a response (the route cache is not cleared)
                "clear_route_cache": False,
            },
        },
        {"name": FILTER, "disabled": True, "typed_config": {"@type": _MUTATION}},
    ),
)
