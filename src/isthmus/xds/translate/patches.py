"""MeshProxyPatch: apply Kuma's ``appendModifications`` to a proxy's translated Envoy resources.

Each modification names what it edits (``cluster``, ``listener``, ``networkFilter``, ``httpFilter``,
``virtualHost``), an ``operation``, a ``match`` and either a ``value`` (Envoy YAML: a whole resource to add, or
fields merged into the match with protobuf merge semantics) or ``jsonPatches`` (RFC 6902 on the resource's
protobuf JSON, camelCase names). Modifications apply in order; the messages given are copies, never the shared
memoised ones.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import load_yaml
from isthmus.xds import types
from isthmus.xds.translate import known_types

HCM = "envoy.filters.network.http_connection_manager"
REGEX_MATCHER = "envoy.type.matcher.v3.RegexMatcher"
ANY = "google.protobuf.Any"


class PatchError(ValueError):
    """A modification cannot be applied; the message says which one and why."""


def _check_types(data: Any) -> None:
    """Refuse a document naming a type URL that is not a known Envoy message (see :mod:`.known_types`)."""
    for where, _, reason in known_types.unknown_type_urls(data):
        raise PatchError(f"{where}: {reason}")


def _parse(value: str, cls: Any) -> Any:
    try:
        data = load_yaml(value) if value else {}
    except ResourceValidationError as exc:
        raise PatchError(f"value is not a valid {cls.DESCRIPTOR.name}: {exc}") from None
    _check_types(data)
    try:
        return json_format.ParseDict(data, cls())
    except json_format.ParseError as exc:
        raise PatchError(f"value is not a valid {cls.DESCRIPTOR.name}: {exc}") from None


def regex_fields(msg: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(field path, regex)`` of every ``RegexMatcher`` in a message, typed configs (``Any``) included."""
    name = msg.DESCRIPTOR.full_name
    if name == REGEX_MATCHER:
        yield f"{path}.regex" if path else "regex", msg.regex
        return
    if name == ANY:
        if msg.type_url:
            inner = known_types.message_class(msg.type_url)()
            msg.Unpack(inner)
            yield from regex_fields(inner, path)
        return
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        where = f"{path}.{field.name}" if path else field.name
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key in sorted(value):
                    yield from regex_fields(value[key], f"{where}[{key!r}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from regex_fields(item, f"{where}[{i}]")
        else:
            yield from regex_fields(value, where)


def _json_patch(msg: Any, ops: Sequence[dict[str, Any]]) -> Any:
    doc = json_format.MessageToDict(msg)
    for op in ops:
        doc = _apply_op(doc, op)
    out = type(msg)()
    _check_types(doc)
    try:
        json_format.ParseDict(doc, out)
    except (json_format.ParseError, TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise PatchError(f"jsonPatches produce an invalid {msg.DESCRIPTOR.name}: {exc}") from None
    return out


class _Unknown(dict[str, Any]):
    """An object of a resource that is not known yet (when a policy is applied): only what earlier patches of
    the same list put in it is known. It may really be a list, so an index it is given stays unknown."""


def json_patch_problem(ops: Sequence[dict[str, Any]]) -> tuple[int, str] | None:
    """``(index, reason)`` of the first of a modification's ``jsonPatches`` that fails whatever the resource it
    edits (e.g. a path through a number an earlier patch added), or None. Run when a policy is applied."""
    doc: Any = _Unknown()
    for index, op in enumerate(ops):
        try:
            doc = _apply_op(doc, op)
        except PatchError as exc:
            return index, str(exc)
    return None


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchError(f"jsonPatches path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _location(parts: Sequence[str]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts) if parts else "the root"


def _index(part: str, size: int, kind: str, path: str, where: str, end: bool) -> int:
    """A list index of a JSON pointer: digits (``-`` for the end when ``end``), within the list."""
    if end and part == "-":
        return size
    top = size if end else size - 1
    if not (part.isascii() and part.isdigit()) or int(part) > top:
        raise PatchError(
            f"jsonPatches {kind}: {path}: {part!r} is not an index of the list at {where} ({size} items)"
        )
    return int(part)


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    """``doc`` with one RFC 6902 operation (add, remove, replace) applied in place; missing objects on the way
    are created. Every failure is a PatchError naming the operation and its path."""
    kind = op.get("op")
    if kind not in ("add", "remove", "replace"):
        raise PatchError(f"jsonPatches op {kind!r} is not supported (add, remove, replace)")
    path = str(op.get("path", ""))
    parts = _pointer(path)
    parent: Any = doc
    for depth, part in enumerate(parts[:-1]):
        where = _location(parts[:depth])
        if isinstance(parent, list):
            parent = parent[_index(part, len(parent), kind, path, where, end=False)]
        elif isinstance(parent, dict):
            if part not in parent:
                parent[part] = _Unknown() if isinstance(parent, _Unknown) else {}
            parent = parent[part]
        else:
            raise PatchError(_through_value(kind, path, where, parent))
    last, where = parts[-1], _location(parts[:-1])
    value = copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        index = _index(last, len(parent), kind, path, where, end=kind == "add")
        if kind == "add":
            parent.insert(index, value)
        elif kind == "replace":
            parent[index] = value
        else:
            parent.pop(index)
    elif isinstance(parent, _Unknown) and kind != "replace" and (last == "-" or last.isdigit()):
        # perhaps a list, whose items shift: what is known of its items is no more
        for key in [k for k in parent if k == "-" or k.isdigit()]:
            del parent[key]
    elif isinstance(parent, dict):
        if kind == "remove":
            if last in parent:
                del parent[last]
            elif not isinstance(parent, _Unknown):
                raise PatchError(f"jsonPatches remove: {path} does not exist")
        elif kind == "replace" and last not in parent and not isinstance(parent, _Unknown):
            raise PatchError(f"jsonPatches replace: {path} does not exist")
        else:
            parent[last] = value
    else:
        raise PatchError(_through_value(kind, path, where, parent))
    return doc


def _through_value(kind: str, path: str, where: str, value: Any) -> str:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"jsonPatches {kind}: {path}: {where} is {shown}, not an object or a list"


def _edit(msg: Any, mod: dict[str, Any]) -> Any:
    if mod.get("value"):
        msg.MergeFrom(_parse(mod["value"], type(msg)))
    if mod.get("jsonPatches"):
        msg = _json_patch(msg, mod["jsonPatches"])
    return msg


def _origin(name: str) -> str:
    return name.split(":", 1)[0] if ":" in name else ""


def _matches(match: dict[str, Any], name: str) -> bool:
    if match.get("name") not in (None, name):
        return False
    return match.get("origin") in (None, _origin(name))


def _resources(msgs: list[Any], mod: dict[str, Any], cls: Any, name_of: Callable[[Any], str]) -> list[Any]:
    op = mod.get("operation")
    match = mod.get("match") or {}
    if op == "Add":
        return [*msgs, _parse(mod.get("value", ""), cls)]
    if op == "Remove":
        return [m for m in msgs if not _matches(match, name_of(m))]
    if op == "Patch":
        return [_edit(m, mod) if _matches(match, name_of(m)) else m for m in msgs]
    raise PatchError(f"operation {op!r} is not supported here (Add, Remove, Patch)")


def _insert(items: list[Any], new: Any, op: str, match: dict[str, Any]) -> list[Any]:
    if op == "AddFirst":
        return [new, *items]
    if op == "AddLast":
        return [*items, new]
    names = [i.name for i in items]
    target = match.get("name")
    if target not in names:
        return items  # AddBefore/AddAfter without a matching filter: nothing to anchor to
    index = names.index(target) + (1 if op == "AddAfter" else 0)
    return [*items[:index], new, *items[index:]]


def _listener_filters(listener: listener_pb2.Listener, mod: dict[str, Any], http: bool) -> None:
    match = mod.get("match") or {}
    if match.get("listenerName") not in (None, listener.name):
        return
    if match.get("origin") not in (None, _origin(listener.name)):
        return
    op = str(mod.get("operation"))
    for chain in listener.filter_chains:
        if not http:
            filters = list(chain.filters)
            new = _network_filters(filters, mod, op, match)
            del chain.filters[:]
            chain.filters.extend(new)
            continue
        for f in chain.filters:
            if f.name != HCM:
                continue
            manager = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(manager)
            # the router stays last: filters added "last" go just before it, as in Kuma
            router = [h for h in manager.http_filters if h.name == "envoy.filters.http.router"]
            others = [h for h in manager.http_filters if h.name != "envoy.filters.http.router"]
            new_filters = _http_filters(others, mod, op, match) + router
            del manager.http_filters[:]
            manager.http_filters.extend(new_filters)
            f.typed_config.Pack(manager)


def _network_filters(filters: list[Any], mod: dict[str, Any], op: str, match: dict[str, Any]) -> list[Any]:
    if op.startswith("Add"):
        return _insert(filters, _parse(mod.get("value", ""), listener_components_pb2.Filter), op, match)
    if op == "Remove":
        return [f for f in filters if match.get("name") not in (None, f.name)]
    if op == "Patch":
        return [_edit(f, mod) if match.get("name") in (None, f.name) else f for f in filters]
    raise PatchError(f"operation {op!r} is not supported for filters")


def _http_filters(filters: list[Any], mod: dict[str, Any], op: str, match: dict[str, Any]) -> list[Any]:
    if op.startswith("Add"):
        return _insert(filters, _parse(mod.get("value", ""), hcm_pb2.HttpFilter), op, match)
    if op == "Remove":
        return [f for f in filters if match.get("name") not in (None, f.name)]
    if op == "Patch":
        return [_edit(f, mod) if match.get("name") in (None, f.name) else f for f in filters]
    raise PatchError(f"operation {op!r} is not supported for filters")


def _virtual_hosts(route: route_pb2.RouteConfiguration, mod: dict[str, Any]) -> None:
    match = mod.get("match") or {}
    if match.get("routeConfigurationName") not in (None, route.name):
        return
    hosts = _resources(list(route.virtual_hosts), mod, route_components_pb2.VirtualHost, lambda v: v.name)
    del route.virtual_hosts[:]
    route.virtual_hosts.extend(hosts)


VALUE_TYPES: dict[str, Any] = {
    "cluster": cluster_pb2.Cluster,
    "listener": listener_pb2.Listener,
    "networkFilter": listener_components_pb2.Filter,
    "httpFilter": hcm_pb2.HttpFilter,
    "virtualHost": route_components_pb2.VirtualHost,
}


def check_value(kind: str, value: str) -> Any:
    """The message ``value`` describes; PatchError if it is not (part of) the Envoy message a ``kind``
    modification edits or names a type URL Isthmus does not know."""
    return _parse(value, VALUE_TYPES[kind])


def apply_patches(messages: dict[str, list[Any]], patches: Sequence[str]) -> dict[str, list[Any]]:
    """A patched copy of ``{type_url: messages}``; raises PatchError naming the modification that failed."""
    out = {t: [copy.deepcopy(m) for m in msgs] for t, msgs in messages.items()}
    for index, raw in enumerate(patches):
        mod = json.loads(raw)
        try:
            if "cluster" in mod:
                out[types.CLUSTER] = _resources(
                    out[types.CLUSTER], mod["cluster"], cluster_pb2.Cluster, lambda c: c.name
                )
            elif "listener" in mod:
                out[types.LISTENER] = _resources(
                    out[types.LISTENER], mod["listener"], listener_pb2.Listener, lambda x: x.name
                )
            elif "networkFilter" in mod or "httpFilter" in mod:
                http = "httpFilter" in mod
                for listener in out[types.LISTENER]:
                    _listener_filters(listener, mod["httpFilter" if http else "networkFilter"], http)
            elif "virtualHost" in mod:
                for route in out[types.ROUTE]:
                    _virtual_hosts(route, mod["virtualHost"])
            else:
                raise PatchError("expected one of cluster, listener, networkFilter, httpFilter, virtualHost")
        except PatchError as exc:
            raise PatchError(f"appendModifications[{index}]: {exc}") from None
    return out
