"""request-transformer: Kong's request edits as Envoy configuration, in Kong's order (uri, method, headers,
querystring; within headers and querystring: remove, rename, replace, add, append).

* headers and querystring: one ordered list of mutations in a per-route ``HeaderMutationPerRoute`` of a header
  mutation filter of its own (``kong.request-transformer``). Kong's conditions map to Envoy's append actions
  (replace = ``OVERWRITE_IF_EXISTS``, add = ``ADD_IF_ABSENT``, append = ``APPEND_IF_EXISTS_OR_ADD``); a header
  rename copies ``%REQ(old)%`` (nothing when the header is absent) then removes the old one; a querystring rename
  only applies when the parameter is there, so the route is split on the presence of each renamed parameter
  (a ``query_parameters`` match), at most :data:`MAX_QUERY_RENAMES` of them. Replacing ``host`` rewrites the
  route's upstream Host (``host_rewrite_literal``), as Kong sets the upstream Host header.
* ``replace.uri``: the route's ``regex_rewrite`` becomes the whole path (the query string is kept); Kong's
  ``$(uri_captures[n])`` / ``$(uri_captures.name)`` templates are the route regex's groups (``\\n``).
* ``http_method``, the body and a ``replace.uri`` reading headers or query arguments: a Lua filter
  (``kong.request-transformer.lua``, which never re-routes) sets ``:method`` (to GET, HEAD or TRACE a
  form-encoded body's arguments are appended to the query string, as Kong does), sets the path, and edits a JSON,
  form-urlencoded or multipart body as Kong does (remove, rename and replace only a non-empty body; add and
  append also an empty one; a multipart body has no append), setting Content-Length.

Templates: Kong renders values with Lua expressions on ``headers``, ``query_params`` and ``uri_captures``;
Isthmus supports the lookups (``$(headers.name)``, ``$(headers["name"])``, ``$(query_params...)`` and, in
``replace.uri``, ``$(uri_captures[n])`` / ``$(uri_captures.name)``): Envoy's ``%REQ(name)%`` and
``%QUERY_PARAM(name)%`` in header and querystring values, the Lua filter for body values and the path. Refused at
apply ("not supported yet"): any other expression, a template reading a header the same configuration changes
(Envoy reads it after the earlier edits, Kong before), uri captures outside ``replace.uri``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Annotated, Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, transform_lua

FILTER = "kong.request-transformer"
LUA_FILTER = "kong.request-transformer.lua"
_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_MUTATION_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
MAX_QUERY_RENAMES = 4
_HEADER_NAME = re.compile(r"^[a-zA-Z0-9\-_]+$")
_PAIR = re.compile(r"^([^:]+):*(.*)$", re.S)  # Kong's "^([^:]+):*(.-)$"


def _name_value(entry: str) -> tuple[str, str]:
    match = _PAIR.match(entry)
    return (match.group(1), match.group(2)) if match else (entry, "")


Part = tuple[str, str]  # ("lit", text) | ("header", name) | ("query", name) | ("capture", index or name)
_ACCESS_DOT = re.compile(r"^\s*(headers|query_params|uri_captures)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_ACCESS_KEY = re.compile(
    r"""^\s*(headers|query_params|uri_captures)\s*\[\s*(?:"([^"]*)"|'([^']*)')\s*\]\s*$"""
)
_ACCESS_INDEX = re.compile(r"^\s*uri_captures\s*\[\s*(\d+)\s*\]\s*$")
_KINDS = {"headers": "header", "query_params": "query", "uri_captures": "capture"}


class TemplateError(ValueError):
    pass


def template(value: str) -> list[Part]:
    """Kong's template (``$(expr)``, parentheses balanced) as literal and lookup parts; the lookups supported are
    ``headers.name``, ``headers["name"]``, ``query_params...`` and ``uri_captures[n]`` / ``uri_captures.name``
    (a header name as ngx reads it: lowercased, ``_`` as ``-``); any other expression is a TemplateError."""
    parts: list[Part] = []
    position = 0
    while (start := value.find("$(", position)) >= 0:
        depth, end = 0, -1
        for i in range(start + 1, len(value)):
            depth += {"(": 1, ")": -1}.get(value[i], 0)
            if depth == 0:
                end = i
                break
        if end < 0:
            break
        if start > position:
            parts.append(("lit", value[position:start]))
        expr = value[start + 2 : end]
        found = _ACCESS_INDEX.match(expr)
        if found:
            parts.append(("capture", found.group(1)))
        elif found := _ACCESS_DOT.match(expr) or _ACCESS_KEY.match(expr):
            kind = _KINDS[found.group(1)]
            name = next(g for g in found.groups()[1:] if g is not None)
            parts.append((kind, name.lower().replace("_", "-") if kind == "header" else name))
        else:
            raise TemplateError(f"template '$({expr})' is not supported yet")
        position = end + 1
    if position < len(value) or not parts:
        parts.append(("lit", value[position:]))
    return parts


def _formatted(parts: list[Part]) -> str:
    """Template parts as Envoy's substitution format (``%REQ(h)%``, ``%QUERY_PARAM(q)%``, literals escaped)."""
    out = []
    for kind, text in parts:
        if kind == "header":
            out.append(f"%REQ({text})%")
        elif kind == "query":
            out.append(f"%QUERY_PARAM({text})%")
        else:
            out.append(_literal(text))
    return "".join(out)


def _lua_value(value: str) -> str | list[list[str]]:
    """A value for the Lua filter: the text, or its template parts."""
    parts = template(value)
    return value if parts == [("lit", value)] else [list(p) for p in parts]


def _header(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"'{value}' is not a valid header")
    return value


def _colon_header(value: str) -> str:
    """Kong's ``match = "^[^:]+:.*$"`` then its header name check."""
    if not re.match(r"^[^:]+:", value):
        raise ValueError(f"invalid value: {value}")
    return _header(_name_value(value)[0]) and value


def _colon_headers(value: str) -> str:
    """A rename: both names are header names."""
    _colon_header(value)
    _header(_name_value(value)[1])
    return value


def _has_value(value: str) -> str:
    name, rest = _name_value(value)
    if rest == "":
        raise ValueError(f"key '{name}' has no value")
    return value


Header = Annotated[str, AfterValidator(_header)]
ColonHeader = Annotated[str, AfterValidator(_colon_header)]
RenameHeader = Annotated[str, AfterValidator(_colon_headers)]
Pair = Annotated[str, AfterValidator(_has_value)]


class _Remove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: list[str] = Field(default_factory=list)
    headers: list[Header] = Field(default_factory=list)
    querystring: list[str] = Field(default_factory=list)


class _Rename(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: list[Pair] = Field(default_factory=list)
    headers: list[RenameHeader] = Field(default_factory=list)
    querystring: list[Pair] = Field(default_factory=list)


class _Pairs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: list[Pair] = Field(default_factory=list)
    headers: list[ColonHeader] = Field(default_factory=list)
    querystring: list[Pair] = Field(default_factory=list)


class _Replace(_Pairs):
    uri: str | None = None


def _method(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[A-Z]+$", value):
        raise ValueError(f"invalid value: {value}")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http_method: Annotated[str | None, AfterValidator(_method)] = None
    remove: _Remove = Field(default_factory=_Remove)
    rename: _Rename = Field(default_factory=_Rename)
    replace: _Replace = Field(default_factory=_Replace)
    add: _Pairs = Field(default_factory=_Pairs)
    append: _Pairs = Field(default_factory=_Pairs)


def _sections(config: Config) -> dict[str, _Remove | _Rename | _Pairs]:
    return {"remove": config.remove, "rename": config.rename, "replace": config.replace,
            "add": config.add, "append": config.append}  # fmt: skip


def _template_problem(value: str, captures: bool = False) -> str | None:
    try:
        parts = template(value)
    except TemplateError as exc:
        return str(exc)
    if not captures and any(kind == "capture" for kind, _ in parts):
        return "uri_captures templates are supported in replace.uri only (not supported yet here)"
    return None


def _touched_headers(config: Config) -> set[str]:
    names = {n.lower() for n in config.remove.headers}
    for section in (config.rename, config.replace, config.add, config.append):
        for entry in section.headers:
            name, value = _name_value(entry)
            names.add(name.lower())
            if section is config.rename:
                names.add(value.lower())
    return names


def checks(config: Config) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    touched = _touched_headers(config)
    for section, fields in _sections(config).items():
        problems: dict[str, str] = {}
        for field in ("body", "headers", "querystring"):
            for entry in getattr(fields, field):
                name, value = _name_value(entry)
                problem = None if section in ("remove", "rename") else _template_problem(value)
                if problem is None and field == "headers" and section not in ("remove", "rename"):
                    read = {text for kind, text in template(value) if kind == "header"}
                    if read & touched:
                        problem = (
                            f"a template reading header '{sorted(read & touched)[0]}', which this configuration "
                            "changes, is not supported yet"
                        )
                    elif name.lower() == "host" and read | {k for k, _ in template(value) if k == "query"}:
                        problem = "a template in the host header is not supported yet"
                if problem is not None:
                    problems.setdefault(field, problem)
        if section == "rename" and any(_name_value(v)[1].lower() == "host" for v in config.rename.headers):
            problems["headers"] = "renaming a header to host is not supported yet"
        if section == "append" and any(_name_value(v)[0].lower() == "host" for v in config.append.headers):
            problems["headers"] = "appending to the host header is not supported yet"
        if section == "rename" and len(config.rename.querystring) > MAX_QUERY_RENAMES:
            problems["querystring"] = (
                f"more than {MAX_QUERY_RENAMES} querystring renames are not supported yet"
            )
        if section == "replace" and config.replace.uri is not None:
            problem = _template_problem(config.replace.uri, captures=True)
            kinds = {kind for kind, _ in template(config.replace.uri)} if problem is None else set()
            if problem is None and "capture" in kinds and kinds & {"header", "query"}:
                problem = "uri_captures with other templates in replace.uri are not supported yet"
            if problem is not None:
                problems["uri"] = problem
        if problems:
            errors[section] = problems
    return errors


# -- Envoy configuration ---------------------------------------------------------------------------------------


def _set(key: str, value: str, action: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action}}


def _query(key: str, value: str, action: str) -> dict[str, Any]:
    return {"append": {"record": {"key": key, "value": value}, "action": action}}


def _literal(value: str) -> str:
    """A value as Envoy's substitution format reads it (``%`` escaped)."""
    return value.replace("%", "%%")


def header_mutations(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """(the request header mutations in Kong's order, the upstream Host a ``replace`` sets)."""
    out: list[dict[str, Any]] = []
    host: str | None = None
    for name in config.remove.headers:
        if name.lower() != "host":  # Kong never removes Host
            out.append({"remove": name.lower()})
    for entry in config.rename.headers:
        old, new = (n.lower() for n in _name_value(entry))
        if old == "host" or old == new:
            continue
        out.append(_set(new, f"%REQ({old})%", "OVERWRITE_IF_EXISTS_OR_ADD"))
        out.append({"remove": old})
    for entry in config.replace.headers:
        name, value = _name_value(entry)
        if name.lower() == "host":
            host = value
        else:
            out.append(_set(name.lower(), _formatted(template(value)), "OVERWRITE_IF_EXISTS"))
    for entry in config.add.headers:
        name, value = _name_value(entry)
        if name.lower() != "host":
            out.append(_set(name.lower(), _formatted(template(value)), "ADD_IF_ABSENT"))
    for entry in config.append.headers:
        name, value = _name_value(entry)
        out.append(_set(name.lower(), _formatted(template(value)), "APPEND_IF_EXISTS_OR_ADD"))
    return out, host


def query_mutations(config: Config, present: frozenset[str]) -> list[dict[str, Any]]:
    """The query parameter mutations in Kong's order, for a request where the renamed parameters in ``present``
    are there (and the others are not)."""
    out: list[dict[str, Any]] = [{"remove": name} for name in config.remove.querystring]
    removed = set(config.remove.querystring)
    for entry in config.rename.querystring:
        old, new = _name_value(entry)
        if old in removed or old not in present or old == new:
            continue
        out.append(_query(new, f"%QUERY_PARAM({old})%", "OVERWRITE_IF_EXISTS_OR_ADD"))
        out.append({"remove": old})
    for entry in config.replace.querystring:
        name, value = _name_value(entry)
        out.append(_query(name, _formatted(template(value)), "OVERWRITE_IF_EXISTS"))
    for entry in config.add.querystring:
        name, value = _name_value(entry)
        out.append(_query(name, _formatted(template(value)), "ADD_IF_ABSENT"))
    for entry in config.append.querystring:
        name, value = _name_value(entry)
        out.append(_query(name, _formatted(template(value)), "APPEND_IF_EXISTS_OR_ADD"))
    return out


def _group_index(regex: str, name: str) -> int | None:
    try:
        return re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", regex)).groupindex.get(name)
    except re.error:
        return None


def lua_uri(config: Config) -> bool:
    """Whether ``replace.uri`` reads headers or query arguments (then the Lua filter sets the path)."""
    uri = config.replace.uri
    return uri is not None and any(kind in ("header", "query") for kind, _ in template(uri))


def uri_rewrite(uri: str, match: dict[str, Any]) -> dict[str, Any]:
    """The ``regex_rewrite`` making the whole upstream path ``uri`` (its captures from the route's path regex)."""
    regex = match.get("safe_regex", {}).get("regex")
    out: list[str] = []
    for kind, text in template(uri):
        if kind == "capture":
            index = None if regex is None else int(text) if text.isdigit() else _group_index(regex, text)
            if index is not None:
                out.append(f"\\{index}")
        else:
            out.append(text.replace("\\", "\\\\"))
    pattern = "^(?:" + regex + ").*$" if regex is not None else "^.*$"
    return {"pattern": {"regex": pattern}, "substitution": "".join(out)}


def lua_edits(config: Config) -> str | None:
    """The Lua filter's edits (JSON): the method, the body edits (values as text or template parts) and a
    templated ``replace.uri``, or None when there are none."""
    body = [config.remove.body, config.rename.body, config.replace.body, config.add.body, config.append.body]
    uri = lua_uri(config)
    if config.http_method is None and not any(body) and not uri:
        return None

    def pairs(entries: list[str]) -> list[list[Any]]:
        return [[name, _lua_value(value)] for name, value in map(_name_value, entries)]

    edits: dict[str, Any] = {
        "body": any(body),
        "remove": config.remove.body,
        "rename": [list(_name_value(e)) for e in config.rename.body],
        "replace": pairs(config.replace.body),
        "add": pairs(config.add.body),
        "append": pairs(config.append.body),
    }
    if config.http_method is not None:
        edits["method"] = config.http_method
    if uri and config.replace.uri is not None:
        edits["uri"] = [list(p) for p in template(config.replace.uri)]
    return json.dumps(edits, separators=(",", ":"))


def _renamed_present(config: Config) -> list[str]:
    removed = set(config.remove.querystring)
    names = [_name_value(e)[0] for e in config.rename.querystring]
    return list(dict.fromkeys(n for n in names if n not in removed))


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    headers, host = header_mutations(config)
    renamed = _renamed_present(config)
    out: list[EnvoyRoute] = []
    for r in routes:
        if "route" not in r:  # an answer of Envoy's own (a plugin's direct_response): nothing goes upstream
            out.append(r)
            continue
        action = dict(r["route"])
        if config.replace.uri is not None:
            action.pop("prefix_rewrite", None)
            action.pop("regex_rewrite", None)
            if not lua_uri(config):  # else the Lua filter sets the whole path
                action["regex_rewrite"] = uri_rewrite(config.replace.uri, r["match"])
        if host is not None:
            for key in ("auto_host_rewrite", "host_rewrite_header", "host_rewrite_path_regex"):
                action.pop(key, None)
            action["host_rewrite_literal"] = host
        per_filter = dict(r.get("typed_per_filter_config", {}))
        lua = lua_edits(config)
        if lua is not None:
            per_filter[LUA_FILTER] = {
                "@type": _LUA_PER_ROUTE,
                "name": "request",
                "filter_context": {"edits": lua},
            }
        # one variant per combination of renamed parameters present, most present first (more specific match)
        for count in range(len(renamed), -1, -1):
            for present in itertools.combinations(renamed, count):
                mutations: dict[str, Any] = {}
                if headers:
                    mutations["request_mutations"] = headers
                query = query_mutations(config, frozenset(present))
                if query:
                    mutations["query_parameter_mutations"] = query
                variant_filters = dict(per_filter)
                if mutations:
                    variant_filters[FILTER] = {"@type": _MUTATION_PER_ROUTE, "mutations": mutations}
                variant = {**r, "route": action, "typed_per_filter_config": variant_filters}
                if present:  # the first variant whose parameters are all there is the one for the request
                    conditions = [{"name": n, "present_match": True} for n in present]
                    variant["match"] = {
                        **r["match"],
                        "query_parameters": [*r["match"].get("query_parameters", []), *conditions],
                    }
                out.append(variant)
    return out


KIND = PluginKind(
    name="request-transformer",
    priority=801,
    config=Config,
    apply=apply,
    checks=checks,
    http_filters=(
        {
            "name": LUA_FILTER,
            "disabled": True,
            "typed_config": {
                "@type": _LUA,
                "source_codes": {"request": {"inline_string": transform_lua.REQUEST}},
                # the method and path it sets do not choose another route (Kong routes before its plugins run)
                "clear_route_cache": False,
            },
        },
        {"name": FILTER, "disabled": True, "typed_config": {"@type": _MUTATION}},
    ),
)
