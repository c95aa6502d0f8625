"""Kong's entities kept per workspace in Isthmus's store, with Kong's CRUD semantics.

Each entity is one store record: type ``Kong<Kind>`` (:data:`KINDS`), name = the entity's id, spec = the entity
as the Admin API shows it, and scope (the record's ``mesh``) ``kong:<workspace>``. The ``kong:`` prefix keeps the
scopes apart from mesh names (a mesh name has no ``:``), so the mesh reconciler and a mesh's cascading delete
never touch gateway records.

:class:`GatewayStore` keeps each workspace's entities in memory (loaded from the store on first use) with the
indexes Kong's rules need: unique fields and the children of each entity. Every change is checked against them
and written as one atomic store batch under one lock, then applied to the indexes, so a failed check or a failed
write leaves both the store and the indexes as they were.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from isthmus.gateway import entities as e
from isthmus.gateway.errors import (
    PRIMARY_KEY_VIOLATION,
    KongError,
    Plain,
    foreign_key_violation,
    referenced_by,
    schema_violation,
    unique_violation,
)
from isthmus.resources.common import Model
from isthmus.resources.registry import ResourceType, Scope
from isthmus.store.base import Op, OpKind, ResourceStore

SCOPE_PREFIX = "kong:"
EMPTY_HASH = "0" * 32


@dataclass(frozen=True)
class Kind:
    collection: str  # the Admin API's name: "services", "key-auths"
    record_type: str  # the store's type: "KongService"
    model: type[e.Entity]
    endpoint_key: str | None  # the field an entity can be named by in paths besides its id
    foreign: dict[str, str] = field(default_factory=dict)  # field -> parent collection
    unique: tuple[tuple[str, ...], ...] = ()
    cascade: bool = False  # deleted with its parent (else: a parent with such children cannot be deleted)


KINDS: dict[str, Kind] = {
    k.collection: k
    for k in (
        Kind("vaults", "KongVault", e.Vault, "prefix", {}, (("prefix",),)),
        Kind("key-sets", "KongKeySet", e.KeySet, "name", {}, (("name",),)),
        Kind(
            "keys", "KongKey", e.Key, "name", {"set": "key-sets"}, (("name",), ("kid", "set")), cascade=True
        ),
        Kind("consumer_groups", "KongConsumerGroup", e.ConsumerGroup, "name", {}, (("name",),)),
        Kind("certificates", "KongCertificate", e.Certificate, None),
        Kind("ca_certificates", "KongCaCertificate", e.CaCertificate, None, unique=(("cert_digest",),)),
        Kind("snis", "KongSni", e.Sni, "name", {"certificate": "certificates"}, (("name",),), cascade=True),
        Kind(
            "services", "KongService", e.Service, "name", {"client_certificate": "certificates"}, (("name",),)
        ),
        Kind("routes", "KongRoute", e.Route, "name", {"service": "services"}, (("name",),)),
        Kind("consumers", "KongConsumer", e.Consumer, "username", {}, (("username",), ("custom_id",))),
        Kind(
            "upstreams",
            "KongUpstream",
            e.Upstream,
            "name",
            {"client_certificate": "certificates"},
            (("name",),),
        ),
        Kind(
            "targets",
            "KongTarget",
            e.Target,
            "target",
            {"upstream": "upstreams"},
            (("upstream", "target"),),
            cascade=True,
        ),
        Kind(
            "plugins",
            "KongPlugin",
            e.Plugin,
            "instance_name",
            {"service": "services", "route": "routes", "consumer": "consumers"},
            (("instance_name",), ("name", "route", "service", "consumer")),
            cascade=True,
        ),
        Kind(
            "key-auths",
            "KongKeyAuth",
            e.KeyAuthCredential,
            "key",
            {"consumer": "consumers"},
            (("key",),),
            cascade=True,
        ),
        Kind(
            "basic-auths",
            "KongBasicAuth",
            e.BasicAuthCredential,
            "username",
            {"consumer": "consumers"},
            (("username",),),
            cascade=True,
        ),
        Kind("jwts", "KongJwt", e.JwtCredential, "key", {"consumer": "consumers"}, (("key",),), cascade=True),
        Kind(
            "acls",
            "KongAcl",
            e.AclCredential,
            "group",
            {"consumer": "consumers"},
            (("consumer", "group"),),
            cascade=True,
        ),
    )
}


class KongRecordSpec(Model):
    """The registry's view of a gateway record (the gateway validates it, see :mod:`isthmus.gateway.entities`)."""

    model_config = Model.model_config | {"extra": "allow"}


def resource_types() -> list[ResourceType]:
    """The store types of the gateway's entities, internal: the Kuma REST API never serves them."""
    return [
        ResourceType(
            k.record_type,
            f"kong-{k.collection}",
            Scope.MESH,
            KongRecordSpec,
            spec_at_top_level=True,
            internal=True,
        )
        for k in KINDS.values()
    ]


def scope(workspace: str) -> str:
    return SCOPE_PREFIX + workspace


def _ref_id(value: Any) -> str | None:
    return value.get("id") if isinstance(value, dict) else None


def _under(body: dict[str, Any], parent: tuple[str, str] | None) -> dict[str, Any]:
    """A copy of ``body`` with a nested path's parent (foreign key field, the parent's id) set."""
    body = dict(body)
    if parent is not None:
        body[parent[0]] = {"id": parent[1]}
    return body


def _named(ws: Workspace, collection: str, key: str, parent: tuple[str, str] | None) -> dict[str, Any] | None:
    """The entity ``key`` names (None: none); 404 when a nested path's parent is not its parent."""
    existing = ws.find(collection, key, parent)
    if existing is not None and parent is not None and _ref_id(existing.get(parent[0])) != parent[1]:
        raise Plain(404, "Not found")
    return existing


def _unique_value(entity: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The values of a unique group, None when it does not constrain this entity (all null, or a single
    null field: Kong allows many nulls)."""
    values = tuple(
        _ref_id(entity.get(f)) if isinstance(entity.get(f), dict) else entity.get(f) for f in fields
    )
    if len(fields) == 1 and values[0] is None:
        return None
    return values


def _unique_fields(entity: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: entity.get(f) for f in fields}


class Workspace:
    """One workspace's entities and indexes (in memory, mirror of the store)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entities: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in KINDS}
        self.unique: dict[tuple[str, tuple[str, ...]], dict[tuple[Any, ...], str]] = {}
        self.children: dict[str, set[tuple[str, str]]] = {}  # parent id -> {(collection, id)}
        self.generation = 0
        self._hash: tuple[int, str] | None = None

    def add(self, collection: str, entity: dict[str, Any]) -> None:
        kind = KINDS[collection]
        eid = entity["id"]
        self.entities[collection][eid] = entity
        for fields in kind.unique:
            value = _unique_value(entity, fields)
            if value is not None:
                self.unique.setdefault((collection, fields), {})[value] = eid
        for f in kind.foreign:
            parent = _ref_id(entity.get(f))
            if parent:
                self.children.setdefault(parent, set()).add((collection, eid))

    def remove(self, collection: str, eid: str) -> None:
        kind = KINDS[collection]
        entity = self.entities[collection].pop(eid, None)
        if entity is None:
            return
        for fields in kind.unique:
            value = _unique_value(entity, fields)
            index = self.unique.get((collection, fields), {})
            if value is not None and index.get(value) == eid:
                del index[value]
        for f in kind.foreign:
            parent = _ref_id(entity.get(f))
            if parent and parent in self.children:
                self.children[parent].discard((collection, eid))
                if not self.children[parent]:
                    del self.children[parent]

    def find(self, collection: str, key: str, parent: tuple[str, str] | None = None) -> dict[str, Any] | None:
        """An entity by id or by its endpoint key (among ``parent``'s children when given: an ACL's group,
        a target's address are unique only there)."""
        if e.is_uuid(key):
            found = self.entities[collection].get(key.lower())
            if found is not None:
                return found
        kind = KINDS[collection]
        if parent is not None and kind.endpoint_key is not None:
            for child_collection, child_id in self.children.get(parent[1], ()):
                child = (
                    self.entities[child_collection].get(child_id) if child_collection == collection else None
                )
                if child is not None and child.get(kind.endpoint_key) == key:
                    return child
        if (
            kind.endpoint_key is None
            or len(next((u for u in kind.unique if u[0] == kind.endpoint_key), ())) != 1
        ):
            return None
        eid = self.unique.get((collection, (kind.endpoint_key,)), {}).get((key,))
        return self.entities[collection].get(eid) if eid else None

    def configuration_hash(self) -> str:
        if self._hash is not None and self._hash[0] == self.generation:
            return self._hash[1]
        digest = hashlib.md5(usedforsecurity=False)
        empty = True
        for collection in sorted(self.entities):
            for eid in sorted(self.entities[collection]):
                empty = False
                digest.update(json.dumps(self.entities[collection][eid], sort_keys=True).encode())
        value = EMPTY_HASH if empty else digest.hexdigest()
        self._hash = (self.generation, value)
        return value


def _merge_records(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old``, nested objects merged key by key (arrays and scalars replaced), as Kong's PATCH."""
    out = dict(old)
    for key, value in new.items():
        before = out.get(key)
        out[key] = (
            _merge_records(before, value) if isinstance(before, dict) and isinstance(value, dict) else value
        )
    return out


@dataclass
class Change:
    collection: str
    entity: dict[str, Any] | None  # None: delete
    id: str


class GatewayStore:
    """Kong's entities of every workspace on top of a :class:`~isthmus.store.base.ResourceStore`."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._workspaces: dict[str, Workspace] = {}
        self._lock = asyncio.Lock()

    async def workspace(self, name: str) -> Workspace:
        ws = self._workspaces.get(name)
        if ws is not None:
            return ws
        async with self._lock:
            return await self._loaded(name)

    # -- reads -----------------------------------------------------------------------------------------------
    async def get(self, workspace: str, collection: str, key: str) -> dict[str, Any]:
        found = (await self.workspace(workspace)).find(collection, key)
        if found is None:
            raise Plain(404, "Not found")
        return found

    # -- writes ----------------------------------------------------------------------------------------------
    async def create(
        self, workspace: str, collection: str, body: dict[str, Any], parent: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """POST: a new entity (``parent``: the foreign key field and the parent's id of a nested path)."""
        async with self._lock:
            ws = await self._loaded(workspace)
            body = _under(body, parent)
            if (
                "id" in body
                and isinstance(body["id"], str)
                and ws.entities[collection].get(body["id"].lower())
            ):
                raise KongError(
                    PRIMARY_KEY_VIOLATION,
                    f"primary key violation on key '{{id=\"{body['id']}\"}}'",
                    {"id": body["id"]},
                )
            return await self._save(ws, collection, body, None, body)

    async def upsert(
        self,
        workspace: str,
        collection: str,
        key: str,
        body: dict[str, Any],
        parent: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """PUT: replace the entity named by ``key`` (id or endpoint key), or create it under that key (404 when
        a nested path's parent is not the stored entity's)."""
        async with self._lock:
            ws = await self._loaded(workspace)
            kind = KINDS[collection]
            existing = _named(ws, collection, key, parent)
            body = _under(body, parent)
            if existing is not None:
                body["id"] = existing["id"]
                body.setdefault("created_at", existing["created_at"])
            elif e.is_uuid(key):
                body["id"] = key.lower()
            elif kind.endpoint_key is not None:
                body[kind.endpoint_key] = key
            else:
                raise KongError(
                    1, f"invalid primary key '{key}': expected a valid UUID", {"id": "expected a valid UUID"}
                )
            if existing is not None and not e.is_uuid(key) and kind.endpoint_key:
                body[kind.endpoint_key] = key
            body.pop("updated_at", None)
            return await self._save(ws, collection, body, existing, body)

    async def update(
        self,
        workspace: str,
        collection: str,
        key: str,
        body: dict[str, Any],
        parent: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """PATCH: the stored entity with ``body``'s fields replaced."""
        async with self._lock:
            ws = await self._loaded(workspace)
            existing = _named(ws, collection, key, parent)
            if existing is None:
                raise Plain(404, "Not found")
            merged = {**existing, **body, "id": existing["id"], "created_at": existing["created_at"]}
            if collection == "plugins" and isinstance(body.get("config"), dict):
                # Kong's ``merge_values``: a PATCHed plugin config is merged into the stored one, records deeply
                merged["config"] = _merge_records(existing.get("config") or {}, body["config"])
            merged.pop("updated_at", None)
            if collection == "services" and "url" in body:
                for f in ("protocol", "host", "port", "path"):
                    if f not in body:
                        merged.pop(f, None)
            if collection == "basic-auths" and "password" not in body:
                body = {**body}
            return await self._save(ws, collection, merged, existing, body, hash_password="password" in body)

    async def delete(
        self, workspace: str, collection: str, key: str, parent: tuple[str, str] | None = None
    ) -> None:
        """DELETE: the entity and its cascading children; idempotent (a missing entity is no error)."""
        async with self._lock:
            ws = await self._loaded(workspace)
            existing = _named(ws, collection, key, parent)
            if existing is None:
                if parent is not None:
                    raise Plain(404, "Not found")
                return
            changes: list[Change] = []
            self._delete_tree(ws, collection, existing["id"], changes, set())
            await self._commit(ws, changes)

    async def replace(self, workspace: str, plan: Callable[[Workspace], list[Change]]) -> list[Change]:
        """Replace the workspace's entities: ``plan`` (run under the lock on the current entities, in a worker
        thread so a large file does not stall the event loop; it must only read them) returns the changes,
        written as one atomic batch (nothing is written when it raises)."""
        async with self._lock:
            ws = await self._loaded(workspace)
            changes = await asyncio.to_thread(plan, ws)
            if changes:
                await self._commit(ws, changes)
            return changes

    # -- internals -------------------------------------------------------------------------------------------
    async def _loaded(self, workspace: str) -> Workspace:
        """The workspace, loaded under the lock already held."""
        ws = self._workspaces.get(workspace)
        if ws is None:
            ws = Workspace(workspace)
            for kind in KINDS.values():
                page = await self.store.list(kind.record_type, scope(workspace))
                for record in page.items:
                    ws.add(kind.collection, dict(record.spec))
            self._workspaces[workspace] = ws
        return ws

    def _delete_tree(
        self, ws: Workspace, collection: str, eid: str, changes: list[Change], seen: set[str]
    ) -> None:
        if eid in seen:
            return
        seen.add(eid)
        for child_collection, child_id in sorted(ws.children.get(eid, ())):
            if not KINDS[child_collection].cascade:
                raise referenced_by(child_collection, collection)
            self._delete_tree(ws, child_collection, child_id, changes, seen)
        changes.append(Change(collection, None, eid))

    def _resolve(self, ws: Workspace, collection: str, body: dict[str, Any]) -> None:
        """Foreign keys given as ``{"id"}``, ``{"name"}`` (the parent's endpoint key) or a bare id or name
        become ``{"id": ...}`` of an existing entity; anything else is left for the schema to refuse."""
        for f, parent_collection in KINDS[collection].foreign.items():
            value = body.get(f)
            if value is None:
                continue
            parent_kind = KINDS[parent_collection]
            key: str | None = None
            shown: dict[str, Any] = {}
            if isinstance(value, str):
                key, shown = (
                    value,
                    ({"id": value} if e.is_uuid(value) else {parent_kind.endpoint_key or "id": value}),
                )
            elif isinstance(value, dict) and len(value) == 1:
                ((name, raw),) = value.items()
                if isinstance(raw, str) and name in ("id", parent_kind.endpoint_key, "name"):
                    if name == "id" and not e.is_uuid(raw):
                        continue  # the schema says "expected a valid UUID"
                    key, shown = raw, {name: raw}
            if key is None:
                continue
            found = ws.find(parent_collection, key)
            if found is None:
                raise foreign_key_violation(f, shown, parent_collection)
            body[f] = {"id": found["id"]}

    async def _save(
        self,
        ws: Workspace,
        collection: str,
        data: dict[str, Any],
        existing: dict[str, Any] | None,
        body: dict[str, Any],
        *,
        hash_password: bool = True,
    ) -> dict[str, Any]:
        """Checks ``data`` as the entity replacing ``existing`` (None: a new one) and stores it with what the
        request's ``body`` adds (a certificate's SNIs); the stored entity."""
        entity = self._prepare(ws, collection, data, existing, hash_password=hash_password)
        await self._commit(
            ws, [Change(collection, entity, entity["id"]), *self._transient(ws, collection, entity, body)]
        )
        return entity

    def _prepare(
        self,
        ws: Workspace,
        collection: str,
        body: dict[str, Any],
        existing: dict[str, Any] | None,
        *,
        hash_password: bool = True,
    ) -> dict[str, Any]:
        kind = KINDS[collection]
        self._resolve(ws, collection, body)
        data = {k: v for k, v in body.items() if not (collection == "certificates" and k == "snis")}
        model = e.validate(kind.model, {k: v for k, v in data.items() if v is not None or k in ("tags",)})
        if isinstance(model, e.CaCertificate):
            model.fill_digest()
        if isinstance(model, e.BasicAuthCredential) and hash_password:
            model.password = hashlib.sha1(
                (model.password + model.consumer.id).encode(), usedforsecurity=False
            ).hexdigest()
        entity = model.dump()
        entity["updated_at"] = time.time() if collection == "targets" else int(time.time())
        if collection == "targets":
            entity["updated_at"] = round(float(entity["updated_at"]), 3)
        if collection == "certificates":
            entity["snis"] = sorted(
                sni["name"]
                for sni in ws.entities["snis"].values()
                if _ref_id(sni["certificate"]) == entity["id"]
            )
            if isinstance(body.get("snis"), list):
                entity["snis"] = list(body["snis"])
        for fields in kind.unique:
            value = _unique_value(entity, fields)
            if value is None:
                continue
            owner = ws.unique.get((collection, fields), {}).get(value)
            if owner is not None and owner != entity["id"]:
                raise unique_violation(_unique_fields(entity, fields))
        if (
            collection == "plugins"
        ):  # the gateway's one tracer: the workspace's tracing plugins share a collector
            from isthmus.gateway.plugins.observability import workspace_errors

            problems = workspace_errors(ws.entities["plugins"].values(), entity)
            if problems:
                raise schema_violation(problems)
        return entity

    def _transient(
        self, ws: Workspace, collection: str, entity: dict[str, Any], body: dict[str, Any]
    ) -> Iterable[Change]:
        """A certificate's ``snis`` (write-only list) become SNI entities, replacing the certificate's others."""
        if collection != "certificates" or not isinstance(body.get("snis"), list):
            return []
        names = list(dict.fromkeys(entity["snis"]))
        changes: list[Change] = []
        mine = {
            s["name"]: s for s in ws.entities["snis"].values() if _ref_id(s["certificate"]) == entity["id"]
        }
        for name, sni in mine.items():
            if name not in names:
                changes.append(Change("snis", None, sni["id"]))
        for name in names:
            if name in mine:
                continue
            sni_entity = e.validate(e.Sni, {"name": name, "certificate": {"id": entity["id"]}}).dump()
            if ws.unique.get(("snis", ("name",)), {}).get((sni_entity["name"],)):
                raise unique_violation({"name": sni_entity["name"]})
            changes.append(Change("snis", sni_entity, sni_entity["id"]))
        entity["snis"] = names
        return changes

    async def _commit(self, ws: Workspace, changes: list[Change]) -> None:
        ops = [
            Op(OpKind.DELETE, KINDS[c.collection].record_type, scope(ws.name), c.id)
            if c.entity is None
            else Op(OpKind.UPSERT, KINDS[c.collection].record_type, scope(ws.name), c.id, spec=c.entity)
            for c in changes
        ]
        await self.store.write(ops)
        for c in changes:
            ws.remove(c.collection, c.id)
            if c.entity is not None:
                ws.add(c.collection, c.entity)
        # a certificate shows its SNIs' names
        for c in changes:
            if c.collection == "snis":
                cert = ws.entities["certificates"].get(_ref_id((c.entity or {}).get("certificate")) or "")
                if cert is not None:
                    cert["snis"] = sorted(
                        s["name"]
                        for s in ws.entities["snis"].values()
                        if _ref_id(s["certificate"]) == cert["id"]
                    )
        ws.generation += 1
