"""Kong's declarative configuration (``_format_version: "3.0"``, decK and DB-less dialects): parse, sync, dump.

:func:`load` reads a file (JSON or YAML) with Isthmus's safe loader. :func:`desired` turns it into the
workspace's entity set: nested entities (routes and plugins under services, plugins under routes and consumers,
targets under upstreams, credentials under consumers, SNIs under certificates) get their parent's foreign key,
flat ones name their parents by name or id, and every entity is validated with the Admin API's models.
Errors are Kong's ``invalid declarative configuration`` (code 14) with ``fields`` shaped like the file and a
message naming each bad entity by its path in the file (``services[0].routes[1].paths[0]: ...``).

Ids are stable, so that applying the same file twice changes nothing: an id given in the file is kept; otherwise
an entity takes the id of the existing entity with the same natural key (name, username, a route's name, a
target's upstream and address, a credential's key, ...), or of an existing entity with the same content.
:func:`plan` diffs the desired set against the workspace (creates, updates, deletes) and :func:`export` writes a
workspace back as a nested file that applies with no change.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from isthmus.gateway import entities as e
from isthmus.gateway.errors import KongError
from isthmus.gateway.store import KINDS, Change, GatewayStore, Workspace
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import load_body

DECLARATIVE_CONFIG = 14
FORMAT_VERSION = "3.0"
# a declarative file may be larger than a resource (10,000 routes and consumers: ~1.5 MB); Kong's Admin API
# takes 10 MB bodies
MAX_FILE_BYTES = 16 << 20
# the file's section names -> the store's collections, in the order parents come before children
SECTIONS: dict[str, str] = {
    "vaults": "vaults",
    "key_sets": "key-sets",
    "keys": "keys",
    "consumer_groups": "consumer_groups",
    "certificates": "certificates",
    "ca_certificates": "ca_certificates",
    "snis": "snis",
    "services": "services",
    "routes": "routes",
    "consumers": "consumers",
    "upstreams": "upstreams",
    "targets": "targets",
    "plugins": "plugins",
    "keyauth_credentials": "key-auths",
    "basicauth_credentials": "basic-auths",
    "jwt_secrets": "jwts",
    "acls": "acls",
}
SECTION_OF = {collection: section for section, collection in SECTIONS.items()}
SINGULAR = {
    "vaults": "vault",
    "key_sets": "key_set",
    "keys": "key",
    "consumer_groups": "consumer_group",
    "certificates": "certificate",
    "ca_certificates": "ca_certificate",
    "snis": "sni",
    "services": "service",
    "routes": "route",
    "consumers": "consumer",
    "upstreams": "upstream",
    "targets": "target",
    "plugins": "plugin",
    "keyauth_credentials": "keyauth_credential",
    "basicauth_credentials": "basicauth_credential",
    "jwt_secrets": "jwt_secret",
    "acls": "acl",
}
# parent section -> {child section: the child's foreign key}
NESTED: dict[str, dict[str, str]] = {
    "key_sets": {"keys": "set"},
    "certificates": {"snis": "certificate"},
    "services": {"routes": "service", "plugins": "service"},
    "routes": {"plugins": "route"},
    "consumers": {
        "plugins": "consumer",
        "keyauth_credentials": "consumer",
        "basicauth_credentials": "consumer",
        "jwt_secrets": "consumer",
        "acls": "consumer",
    },
    "upstreams": {"targets": "upstream"},
}
META = frozenset({"_format_version", "_transform", "_comment", "_ignore", "_workspace", "_konnect", "_info"})
NOT_STORED = frozenset({"hmacauth_credentials", "oauth2_credentials", "consumer_group_plugins"})
GENERATED = {"key-auths": ("key",), "jwts": ("key", "secret")}  # filled at random when the file omits them
TIMESTAMPS = ("created_at", "updated_at")


@dataclass
class Item:
    section: str
    path: tuple[str | int, ...]
    raw: dict[str, Any]
    parent: Item | None = None
    parent_fk: str | None = None
    entity: dict[str, Any] | None = None

    @property
    def collection(self) -> str:
        return SECTIONS[self.section]


@dataclass
class Errors:
    by_path: dict[tuple[str | int, ...], dict[str, Any]] = field(default_factory=dict)
    items: dict[tuple[str | int, ...], Item] = field(default_factory=dict)

    def add(self, item: Item | None, path: tuple[str | int, ...], fields: dict[str, Any]) -> None:
        slot = self.by_path.setdefault(path, {})
        for key, value in fields.items():
            if key == "@entity" and isinstance(slot.get(key), list):
                slot[key].extend(value)
            else:
                slot.setdefault(key, value)
        if item is not None:
            self.items[path] = item

    def raise_if_any(self) -> None:
        if self.by_path:
            raise self.error()

    def error(self) -> KongError:
        fields: dict[str, Any] = {}
        lines: list[str] = []
        for path in sorted(self.by_path, key=lambda p: tuple((isinstance(x, int), x) for x in p)):
            _place(fields, path, self.by_path[path])
            where = _path_text(path)
            for name, message in _flat(self.by_path[path]):
                lines.append(
                    f"{where}.{name}: {message}" if name and where else f"{where or name}: {message}"
                )
        error = KongError(DECLARATIVE_CONFIG, "declarative config is invalid: " + "; ".join(lines), fields)
        error.flattened = [self._flattened(path, entity) for path, entity in self.items.items()]  # type: ignore[attr-defined]
        return error

    def _flattened(self, path: tuple[str | int, ...], item: Item) -> dict[str, Any]:
        raw = item.raw
        errors = [
            {"type": "entity", "message": message}
            if not name
            else {"type": "field", "field": name, "message": message}
            for name, message in _flat(self.by_path.get(path, {}))
        ]
        return {
            "entity_type": SINGULAR[item.section],
            "entity_name": raw.get("name") if isinstance(raw.get("name"), str) else None,
            "entity_id": raw.get("id") if isinstance(raw.get("id"), str) else None,
            "entity_tags": raw.get("tags") if isinstance(raw.get("tags"), list) else None,
            "entity": raw,
            "errors": errors,
        }


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _flat(fields: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field, message) pairs; entity-level messages have an empty field."""
    out: list[tuple[str, str]] = []
    if isinstance(fields, dict):
        for key, value in fields.items():
            if key == "@entity":
                out.extend((prefix, str(m)) for m in (value if isinstance(value, list) else [value]))
            else:
                out.extend(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(fields, list):
        for i, value in enumerate(fields):
            if value is not None:
                out.extend(_flat(value, f"{prefix}[{i}]"))
    else:
        out.append((prefix, str(fields)))
    return out


def _place(target: dict[str, Any], path: tuple[str | int, ...], value: dict[str, Any]) -> None:
    """Put ``value`` at ``path`` (section, index, child section, index, ...) in Kong's nested ``fields``."""
    node: Any = target
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(part, int):
            while len(node) <= part:
                node.append(None)
            if last:
                node[part] = {**(node[part] or {}), **value}
                return
            if node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            if last:
                node[part] = {**node.get(part, {}), **value} if isinstance(node.get(part), dict) else value
                return
            nxt = path[i + 1]
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})


def invalid(message: str, fields: dict[str, Any] | None = None) -> KongError:
    return KongError(
        DECLARATIVE_CONFIG, f"declarative config is invalid: {message}", fields or {"@entity": [message]}
    )


# -- loading ------------------------------------------------------------------------------------------------------
def load(raw: bytes | str) -> dict[str, Any]:
    """The file as a mapping (JSON or YAML; no aliases, bounded size and depth)."""
    try:
        doc = load_body(raw, MAX_FILE_BYTES)
    except ResourceValidationError as exc:
        reason = "; ".join(f"{f.field}: {f.reason}" if f.field else f.reason for f in exc.errors)
        raise invalid(reason) from None
    if not isinstance(doc, dict):
        raise invalid("expected a record (a map of entity sections)")
    return doc


def _check_top(doc: dict[str, Any]) -> None:
    version = doc.get("_format_version")
    if version is None:
        raise invalid(
            "_format_version: required field missing", {"_format_version": "required field missing"}
        )
    if str(version) != FORMAT_VERSION:
        message = f"unsupported _format_version '{version}': Isthmus reads format {FORMAT_VERSION} (convert older files with 'deck file convert')"  # fmt: skip
        raise invalid(message, {"_format_version": message})
    errors: dict[str, Any] = {}
    for key, value in doc.items():
        if key in META:
            continue
        if key in NOT_STORED:
            errors[key] = f"'{key}' entities are not supported by Isthmus's gateway"
        elif key not in SECTIONS:
            errors[key] = "unknown field"
        elif not isinstance(value, list):
            errors[key] = "expected an array"
    if "_transform" in doc and not isinstance(doc["_transform"], bool):
        errors["_transform"] = "expected a boolean"
    if errors:
        text = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise invalid(text, errors)


@dataclass(frozen=True)
class Info:
    """decK's ``_info``: ``select_tags`` (the file manages only the entities with all these tags, and its
    entities get them) and ``defaults`` (field values per entity type, under the file's own)."""

    select_tags: tuple[str, ...] = ()
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def in_scope(self, entity: dict[str, Any]) -> bool:
        return not self.select_tags or set(self.select_tags) <= set(entity.get("tags") or ())


def read_info(doc: dict[str, Any]) -> Info:
    info = doc.get("_info")
    if info is None:
        return Info()
    if not isinstance(info, dict):
        raise invalid("_info: expected a record", {"_info": "expected a record"})
    errors: dict[str, Any] = {}
    tags = info.get("select_tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and e.TAG_RE.match(t) for t in tags):
        errors["select_tags"] = "expected an array of tags"
        tags = []
    defaults = info.get("defaults") or {}
    types = set(SINGULAR.values())
    if not isinstance(defaults, dict) or not all(
        k in types and isinstance(v, dict) for k, v in defaults.items()
    ):
        errors["defaults"] = "expected a record of entity type (service, route, ...) to field values"
        defaults = {}
    for key in info:
        if key not in ("select_tags", "defaults"):
            errors[key] = "unknown field"
    if errors:
        text = "; ".join(f"_info.{k}: {v}" for k, v in errors.items())
        raise invalid(text, {"_info": errors})
    return Info(tuple(dict.fromkeys(tags)), defaults)


def collect(doc: dict[str, Any], errors: Errors, info: Info | None = None) -> list[Item]:
    """Every entity of the file (nested ones too), with its path and its nesting parent."""
    _check_top(doc)
    info = info or Info()
    items: list[Item] = []

    def walk(section: str, entries: list[Any], prefix: tuple[str | int, ...], parent: Item | None) -> None:
        fk = NESTED[parent.section][section] if parent is not None else None
        for i, raw in enumerate(entries):
            path = (*prefix, section, i)
            if section == "snis" and isinstance(raw, str):
                raw = {"name": raw}
            if not isinstance(raw, dict):
                errors.add(None, path, {"@entity": ["expected a record"]})
                continue
            raw = dict(raw)
            ignored = raw.pop("_ignore", None)
            raw.pop("_comment", None)
            if isinstance(ignored, list):
                for name in ignored:
                    if isinstance(name, str):
                        raw.pop(name, None)
            children: dict[str, Any] = {}
            for child_section in NESTED.get(section, {}):
                if child_section in raw and not (section == "plugins"):
                    value = raw.pop(child_section)
                    if value is None:
                        continue
                    if not isinstance(value, list):
                        errors.add(None, path, {child_section: "expected an array"})
                        continue
                    children[child_section] = value
            defaults = info.defaults.get(SINGULAR[section])
            if defaults:
                raw = {**defaults, **raw}
            if info.select_tags and (raw.get("tags") is None or isinstance(raw.get("tags"), list)):
                tags = raw.get("tags")
                given: list[Any] = tags if isinstance(tags, list) else []
                raw["tags"] = [*given, *(t for t in info.select_tags if t not in given)]
            item = Item(section, path, raw, parent, fk)
            if fk is not None and fk in raw and raw[fk] is not None:
                errors.add(item, path, {fk: f"is implied by the entity's place in the file (under {_path_text(parent.path)})"})  # type: ignore[union-attr]  # fmt: skip
            items.append(item)
            for child_section, value in children.items():
                walk(child_section, value, path, item)

    for section in SECTIONS:
        if isinstance(doc.get(section), list):
            walk(section, doc[section], (), None)
    return items


# -- the desired entity set ---------------------------------------------------------------------------------------
def _natural_key(collection: str, entity: dict[str, Any]) -> tuple[Any, ...] | None:
    def ref(name: str) -> Any:
        value = entity.get(name)
        return value.get("id") if isinstance(value, dict) else None

    if collection == "consumers":
        return ("u", entity["username"]) if entity.get("username") else ("c", entity.get("custom_id"))
    if collection == "targets":
        return (ref("upstream"), entity.get("target"))
    if collection == "acls":
        return (ref("consumer"), entity.get("group"))
    if collection == "plugins":
        if entity.get("instance_name"):
            return ("i", entity["instance_name"])
        return ("p", entity.get("name"), ref("route"), ref("service"), ref("consumer"))
    if collection in ("certificates", "ca_certificates"):
        return (entity.get("cert"),)
    key = KINDS[collection].endpoint_key
    if key is not None and entity.get(key) is not None:
        return (entity[key],)
    return None


def _content(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if k not in ("id", *TIMESTAMPS)}


def _fingerprint(entity: dict[str, Any]) -> str:
    return json.dumps(_content(entity), sort_keys=True)


def _sort_key(entity: dict[str, Any]) -> tuple[Any, ...]:
    return (entity.get("created_at") or 0, entity["id"])


class _Builder:
    def __init__(self, ws: Workspace, transform: bool, info: Info | None = None) -> None:
        self.ws = ws
        self.transform = transform
        self.info = info or Info()
        self.errors = Errors()
        self.desired: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in KINDS}
        self.by_key: dict[str, dict[str, str]] = {c: {} for c in KINDS}  # collection -> endpoint key -> id
        self.claimed: set[tuple[str, str]] = set()
        self.matched: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_content: dict[str, dict[str, list[str]]] = {}
        self._unique_seen = {}
        self.existing_by_nk: dict[str, dict[tuple[Any, ...], str]] = {}
        for collection, entities in ws.entities.items():
            index = self.existing_by_nk.setdefault(collection, {})
            for eid, entity in sorted(entities.items(), key=lambda kv: _sort_key(kv[1])):
                nk = _natural_key(collection, entity)
                if nk is not None and self.info.in_scope(entity):
                    index.setdefault(nk, eid)

    def resolve_refs(self, item: Item, body: dict[str, Any]) -> bool:
        ok = True
        kind = KINDS[item.collection]
        if item.parent is not None and item.parent_fk is not None:
            if item.parent.entity is None:
                return False  # the parent is invalid: already reported
            body[item.parent_fk] = {"id": item.parent.entity["id"]}
        for fk, parent_collection in kind.foreign.items():
            if fk == item.parent_fk:
                continue
            value = body.get(fk)
            if value is None:
                continue
            key = value
            if isinstance(value, dict) and len(value) == 1:
                key = next(iter(value.values()))
            if not isinstance(key, str):
                continue  # left for the schema
            found = self.desired[parent_collection].get(key.lower()) if e.is_uuid(key) else None
            if found is None:
                found_id = self.by_key[parent_collection].get(key)
                found = self.desired[parent_collection].get(found_id) if found_id else None
            if found is None and self.info.select_tags:
                outside = self.ws.find(parent_collection, key)  # managed elsewhere: may be referenced
                found = outside if outside is not None and not self.info.in_scope(outside) else None
            if found is None:
                shown = key if isinstance(value, str) else str(value)
                message = (
                    f"invalid reference '{fk}: {shown}' (no such entry in '{SECTION_OF[parent_collection]}')"
                )
                self.errors.add(item, item.path, {fk: message})
                ok = False
                continue
            body[fk] = {"id": found["id"]}
        return ok

    def build(self, items: list[Item]) -> None:
        order = {section: i for i, section in enumerate(SECTIONS)}
        for item in sorted(items, key=lambda it: order[it.section]):
            self.add(item)

    def add(self, item: Item) -> None:
        collection = item.collection
        kind = KINDS[collection]
        body = {k: v for k, v in item.raw.items() if not (collection == "certificates" and k == "snis")}
        if not self.resolve_refs(item, body):
            return
        given_id = isinstance(body.get("id"), str)
        try:
            model = e.validate(kind.model, {k: v for k, v in body.items() if v is not None or k == "tags"})
        except KongError as exc:
            self.errors.add(item, item.path, exc.fields or {"@entity": [exc.message]})
            return
        if isinstance(model, e.CaCertificate):
            model.fill_digest()
        entity = model.dump()
        matched: dict[str, Any] | None = None
        if given_id:
            matched = self.ws.entities[collection].get(entity["id"])
            if matched is not None and not self.info.in_scope(matched):
                self.errors.add(item, item.path, {"id": f"an entity with this id exists outside _info.select_tags ({', '.join(self.info.select_tags)})"})  # fmt: skip
                return
        else:
            matched = self._match(collection, entity, item)
            if matched is not None:
                entity["id"] = matched["id"]
        if matched is not None:
            for name in GENERATED.get(collection, ()):
                if name not in body:
                    entity[name] = matched[name]
        if isinstance(model, e.BasicAuthCredential) and self.transform:
            entity["password"] = hashlib.sha1(
                (model.password + model.consumer.id).encode(), usedforsecurity=False
            ).hexdigest()
        if entity["id"] in self.desired[collection]:
            self.errors.add(item, item.path, {"@entity": [f"uniqueness violation: '{item.section}' entity with primary key set to '{entity['id']}' already declared"]})  # fmt: skip
            return
        for fields in kind.unique:
            values = tuple(
                (entity.get(f) or {}).get("id") if isinstance(entity.get(f), dict) else entity.get(f)
                for f in fields
            )
            if len(fields) == 1 and values[0] is None:
                continue
            index = self.by_key[collection] if fields == (kind.endpoint_key,) else None
            seen = self._unique_seen.setdefault((collection, fields), {})
            if values in seen:
                shown = values[0] if len(fields) == 1 else "/".join(str(v) for v in values)
                self.errors.add(item, item.path, {"@entity": [f"uniqueness violation: '{item.section}' entity with {'/'.join(fields)} set to '{shown}' already declared"]})  # fmt: skip
                return
            seen[values] = entity["id"]
            owner = self.ws.unique.get((collection, fields), {}).get(values)
            if self.info.select_tags and owner is not None and owner != entity["id"]:
                other = self.ws.entities[collection].get(owner)
                if other is not None and not self.info.in_scope(other):
                    shown = values[0] if len(fields) == 1 else "/".join(str(v) for v in values)
                    self.errors.add(item, item.path, {"@entity": [f"uniqueness violation: '{item.section}' entity with {'/'.join(fields)} set to '{shown}' exists outside _info.select_tags"]})  # fmt: skip
                    return
            if index is not None:
                index[str(values[0])] = entity["id"]
        if matched is not None:
            self.claimed.add((collection, matched["id"]))
            self.matched[(collection, entity["id"])] = matched
        item.entity = entity
        self.desired[collection][entity["id"]] = entity

    _unique_seen: dict[tuple[str, tuple[str, ...]], dict[tuple[Any, ...], str]]

    def _match(self, collection: str, entity: dict[str, Any], item: Item) -> dict[str, Any] | None:
        existing = self.ws.entities[collection]
        nk = _natural_key(collection, entity)
        if nk is not None and collection not in GENERATED:
            eid = self.existing_by_nk.get(collection, {}).get(nk)
            if eid is not None and (collection, eid) not in self.claimed:
                return existing[eid]
            return None
        if collection in GENERATED:
            given = [n for n in GENERATED[collection] if n in item.raw]
            parent = (entity.get("consumer") or {}).get("id")
            siblings = [existing[i] for c, i in self.ws.children.get(parent or "", ()) if c == collection]
            for candidate in sorted(siblings, key=_sort_key):
                if (collection, candidate["id"]) in self.claimed or not self.info.in_scope(candidate):
                    continue
                if all(candidate.get(n) == entity.get(n) for n in given):
                    return candidate
            return None
        # no natural key (a service or route without a name): an existing one with the same content
        if collection not in self.by_content:
            index: dict[str, list[str]] = {}
            for candidate in sorted(existing.values(), key=_sort_key):
                if _natural_key(collection, candidate) is None and self.info.in_scope(candidate):
                    index.setdefault(_fingerprint(candidate), []).append(candidate["id"])
            self.by_content[collection] = index
        for eid in self.by_content[collection].get(_fingerprint(entity), []):
            if (collection, eid) not in self.claimed:
                return existing[eid]
        return None

    def finish(self) -> None:
        """Certificates show their SNIs' names; an unchanged entity is the stored one (timestamps and all), a
        changed one keeps its creation time."""
        for cert in self.desired["certificates"].values():
            cert["snis"] = sorted(
                sni["name"] for sni in self.desired["snis"].values() if sni["certificate"]["id"] == cert["id"]
            )
        now = int(time.time())
        for (collection, eid), matched in self.matched.items():
            entity = self.desired[collection][eid]
            if _content(matched) == _content(entity):
                self.desired[collection][eid] = matched
            else:
                entity["created_at"] = matched["created_at"]
                entity["updated_at"] = round(time.time(), 3) if collection == "targets" else now


def desired(
    ws: Workspace, doc: dict[str, Any], info: Info | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """The workspace's entity set the file declares (Kong's error on an invalid file)."""
    errors = Errors()
    info = info or read_info(doc)
    items = collect(doc, errors, info)
    builder = _Builder(ws, doc.get("_transform", True) is not False, info)
    builder.errors = errors
    builder.build(items)
    _tracer_errors(items, errors)
    errors.raise_if_any()
    builder.finish()
    return builder.desired


def _tracer_errors(items: list[Item], errors: Errors) -> None:
    """The gateway's one tracer: the file's tracing plugins share a collector (the Admin API's check)."""
    from isthmus.gateway.plugins.observability import workspace_errors

    plugins = [(item, {**item.raw, "id": repr(item.path)}) for item in items if item.collection == "plugins"]
    for item, plugin in plugins:
        try:
            problems = workspace_errors([p for _, p in plugins], plugin)
        except ValueError:  # an invalid config: reported by its own check
            continue
        if problems:
            errors.add(item, item.path, problems)


@dataclass
class Diff:
    creates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    deletes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def changes(self) -> list[Change]:
        return [
            *(Change(c, None, entity["id"]) for c, entity in self.deletes),
            *(Change(c, entity, entity["id"]) for c, entity in self.creates + self.updates),
        ]

    def report(self) -> dict[str, Any]:
        def row(action: str, collection: str, entity: dict[str, Any]) -> dict[str, Any]:
            return {
                "action": action,
                "entity_type": SINGULAR[SECTION_OF[collection]],
                "entity_id": entity["id"],
                "entity_name": describe(collection, entity),
            }

        rows = [
            *(row("create", c, x) for c, x in self.creates),
            *(row("update", c, x) for c, x in self.updates),
            *(row("delete", c, x) for c, x in self.deletes),
        ]
        summary = {"created": len(self.creates), "updated": len(self.updates), "deleted": len(self.deletes)}
        return {"changes": rows, "summary": summary}


def describe(collection: str, entity: dict[str, Any]) -> str:
    """How decK names an entity in its diff: its name or key, else its id."""
    if collection == "vaults":
        return str(entity["prefix"])
    for name in ("name", "instance_name", "username", "custom_id", "target", "key", "group"):
        value = entity.get(name)
        if isinstance(value, str) and value and not (collection == "certificates"):
            if collection == "plugins" and name == "name" and entity.get("instance_name"):
                continue
            return value
    return str(entity["id"])


def plan(ws: Workspace, want: dict[str, dict[str, dict[str, Any]]], info: Info | None = None) -> Diff:
    """What makes the workspace hold ``want``: with ``_info.select_tags``, only entities with those tags are
    deleted, and an entity outside them whose parent goes is deleted with it (plugins, credentials, targets,
    SNIs) or keeps the parent from going (routes)."""
    info = info or Info()
    diff = Diff()
    for collection in SECTION_OF:
        current = ws.entities[collection]
        for eid, entity in sorted(want[collection].items(), key=lambda kv: _sort_key(kv[1])):
            old = current.get(eid)
            if old is None:
                diff.creates.append((collection, entity))
            elif old != entity:
                diff.updates.append((collection, entity))
        for eid, entity in sorted(current.items(), key=lambda kv: _sort_key(kv[1])):
            if eid not in want[collection] and info.in_scope(entity):
                diff.deletes.append((collection, entity))
    if info.select_tags:
        _cascade(ws, want, diff)
    return diff


def _cascade(ws: Workspace, want: dict[str, dict[str, dict[str, Any]]], diff: Diff) -> None:
    gone = {(c, x["id"]) for c, x in diff.deletes}
    pending = list(gone)
    while pending:
        collection, eid = pending.pop()
        for child_collection, child_id in sorted(ws.children.get(eid, ())):
            if (child_collection, child_id) in gone or child_id in want[child_collection]:
                continue
            if not KINDS[child_collection].cascade:
                from isthmus.gateway.errors import referenced_by

                error = referenced_by(child_collection, collection)
                raise invalid(
                    f"{SINGULAR[SECTION_OF[collection]]} {describe(collection, ws.entities[collection][eid])}: "
                    f"{error.message} (outside _info.select_tags)"
                )
            gone.add((child_collection, child_id))
            pending.append((child_collection, child_id))
            diff.deletes.append((child_collection, ws.entities[child_collection][child_id]))


def as_kong_body(want: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``POST /config``'s 201 body: each section's entities by id."""
    return {section: dict(want[collection]) for section, collection in SECTIONS.items() if want[collection]}


# -- dump ---------------------------------------------------------------------------------------------------------
def export(ws: Workspace, select_tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The workspace as a nested ``_format_version: "3.0"`` file (ids kept, passwords as stored: ``_transform:
    false``) that applies back with no change; with ``select_tags``, only the entities with all of them (and
    ``_info.select_tags`` saying so)."""
    doc: dict[str, Any] = {"_format_version": FORMAT_VERSION, "_transform": False}
    if ws.name != "default":
        doc["_workspace"] = ws.name
    info = Info(select_tags)
    if select_tags:
        doc["_info"] = {"select_tags": list(select_tags)}
    placed: set[tuple[str, str]] = set()

    def clean(collection: str, entity: dict[str, Any], drop: str | None) -> dict[str, Any]:
        out = {
            k: v
            for k, v in entity.items()
            if v is not None
            and k not in TIMESTAMPS
            and k != drop
            and not (collection == "certificates" and k == "snis")
        }
        if collection == "ca_certificates":
            out.pop("cert_digest", None)
        return out

    def children(section: str, entity: dict[str, Any], out: dict[str, Any]) -> None:
        for child_section, fk in NESTED.get(section, {}).items():
            collection = SECTIONS[child_section]
            mine = []
            found = [ws.entities[c][i] for c, i in ws.children.get(entity["id"], ()) if c == collection]
            for child in sorted(found, key=_sort_key):
                if (child.get(fk) or {}).get("id") != entity["id"] or not info.in_scope(child):
                    continue
                others = [f for f in KINDS[collection].foreign if f != fk and child.get(f) is not None]
                if others:
                    continue  # bound to more than one parent: top level
                nested = clean(collection, child, fk)
                children(child_section, child, nested)
                placed.add((collection, child["id"]))
                mine.append(nested)
            if mine:
                out[child_section] = mine

    for section, collection in SECTIONS.items():  # what is not under a parent (in the file) is at the top
        rows = []
        for entity in sorted(ws.entities[collection].values(), key=_sort_key):
            if (collection, entity["id"]) in placed or not info.in_scope(entity):
                continue
            out = clean(collection, entity, None)
            children(section, entity, out)
            rows.append(out)
        if rows:
            doc[section] = rows
    return doc


# -- applying -----------------------------------------------------------------------------------------------------
@dataclass
class Result:
    diff: Diff
    desired: dict[str, dict[str, dict[str, Any]]]


async def sync(
    gateway: GatewayStore, workspace: str, doc: dict[str, Any], *, dry_run: bool = False
) -> Result:
    """Make the workspace hold exactly ``doc``'s entities, in one atomic store batch (none when ``dry_run``)."""
    result: list[Result] = []

    def build(ws: Workspace) -> list[Change]:
        info = read_info(doc)
        want = desired(ws, doc, info)
        diff = plan(ws, want, info)
        result.append(Result(diff, want))
        return [] if dry_run else diff.changes()

    await gateway.replace(workspace, build)
    return result[0]


def request_document(raw: bytes, content_type: str) -> dict[str, Any]:
    """``POST /config``'s body: the file itself (JSON or YAML), or a form / JSON object with a ``config``
    string holding it (as Kong takes it)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qs

        values = parse_qs(raw.decode("utf-8", "replace")).get("config")
        if not values:
            raise KongError(DECLARATIVE_CONFIG, "expected a declarative configuration", {"config": "required field missing"})  # fmt: skip
        return load(values[0])
    doc = load(raw)
    if "_format_version" not in doc and isinstance(doc.get("config"), str):
        return load(doc["config"])
    return doc


def dump_yaml(doc: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True))
