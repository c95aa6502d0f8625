"""Kong's Admin API (``/services``, ``/routes``, ...) on the gateway's store, as a FastAPI application.

Paths, methods and bodies are Kong's (``kong/api/endpoints.lua``): collections answer GET (paginated by
``size``/``offset``, filtered by ``tags``) and POST; an entity, by id or endpoint key, answers GET, PUT (upsert),
PATCH and DELETE; nested paths (``/services/{s}/routes``, ``/consumers/{c}/key-auth``, ...) scope the same
operations to a parent; ``/routes/{r}/service`` and the like read the parent. Paths at the root are the
``default`` workspace, ``/{workspace}/...`` another one. Errors have Kong's bodies (:mod:`isthmus.gateway.errors`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import socket
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from isthmus.gateway import entities as e
from isthmus.gateway.errors import INVALID_OFFSET, INVALID_OPTIONS, INVALID_SIZE, KongError, Plain
from isthmus.gateway.plugins import kinds as plugin_kinds
from isthmus.gateway.store import KINDS, GatewayStore, Workspace

log = logging.getLogger(__name__)

KONG_VERSION = "3.10.0"
DEFAULT_WORKSPACE = "default"
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_BODY = 1024 * 1024

TOP_LEVEL = frozenset(c for c in KINDS if c != "targets")  # Kong has no /targets
# (parent collection, path word) -> (child collection, the child's foreign key field)
NESTED: dict[tuple[str, str], tuple[str, str]] = {
    ("services", "routes"): ("routes", "service"),
    ("services", "plugins"): ("plugins", "service"),
    ("routes", "plugins"): ("plugins", "route"),
    ("consumers", "plugins"): ("plugins", "consumer"),
    ("consumers", "key-auth"): ("key-auths", "consumer"),
    ("consumers", "basic-auth"): ("basic-auths", "consumer"),
    ("consumers", "jwt"): ("jwts", "consumer"),
    ("consumers", "acls"): ("acls", "consumer"),
    ("upstreams", "targets"): ("targets", "upstream"),
    ("certificates", "snis"): ("snis", "certificate"),
    ("key-sets", "keys"): ("keys", "set"),
}
ROOT_WORDS = TOP_LEVEL | {"", "status", "tags", "config", "targets"}
COLLECTION_METHODS = ("GET", "POST")
ENTITY_METHODS = ("GET", "PUT", "PATCH", "DELETE")


def not_allowed() -> Plain:
    return Plain(405, "Method not allowed")


def not_found() -> Plain:
    return Plain(404, "Not found")


# -- request bodies -------------------------------------------------------------------------------------------
def _set_form(target: dict[str, Any], key: str, value: str) -> None:
    """Kong's form keys: ``a.b=`` nests, ``a[]=`` / ``a[1]=`` / a repeated key make a list."""
    if "." in key:
        head, rest = key.split(".", 1)
        sub = target.setdefault(head, {})
        if isinstance(sub, dict):
            _set_form(sub, rest, value)
        return
    if key.endswith("]") and "[" in key:
        key = key[: key.index("[")]
        current = target.setdefault(key, [])
        if isinstance(current, list):
            current.append(value)
        return
    if key in target:
        current = target[key]
        target[key] = [*current, value] if isinstance(current, list) else [current, value]
    else:
        target[key] = value


async def read_body(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Plain(413, f"the request body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        body: dict[str, Any] = {}
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            _set_form(body, key, value)
        return body
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Plain(400, "Cannot parse JSON body") from None
    if not isinstance(parsed, dict):
        raise KongError(2, "schema violation (expected a record)", {"@entity": ["expected a record"]})
    return parsed


# -- pagination and tags --------------------------------------------------------------------------------------
def _page_size(query: dict[str, str]) -> int:
    raw = query.get("size")
    if raw is None:
        return PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise KongError(INVALID_SIZE, "size must be a number") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise KongError(INVALID_SIZE, f"size must be an integer between 1 and {MAX_PAGE_SIZE}")
    return size


def _encode_offset(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _decode_offset(token: str) -> list[Any]:
    try:
        position = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise KongError(INVALID_OFFSET, f"'{token}' is not a valid offset: bad base64 encoding") from None
    if not isinstance(position, list):
        raise KongError(INVALID_OFFSET, f"'{token}' is not a valid offset: bad base64 encoding")
    return position


def tag_filter(query: dict[str, str]) -> tuple[set[str], bool] | None:
    """``tags=a,b`` (all of them) or ``tags=a/b`` (any of them); None without a filter."""
    raw = query.get("tags")
    if raw is None:
        return None
    if "," in raw and "/" in raw:
        raise KongError(INVALID_OPTIONS, "invalid option (tags: invalid filter syntax)", {"tags": "invalid filter syntax"})  # fmt: skip
    any_of = "/" in raw
    tags = {t for t in raw.split("/" if any_of else ",")}
    if not all(tags) or len(tags) > 5:
        raise KongError(INVALID_OPTIONS, "invalid option (tags: invalid filter syntax)", {"tags": "invalid filter syntax"})  # fmt: skip
    return tags, any_of


def _matches(entity: dict[str, Any], wanted: tuple[set[str], bool] | None) -> bool:
    if wanted is None:
        return True
    tags = set(entity.get("tags") or ())
    return bool(tags & wanted[0]) if wanted[1] else wanted[0] <= tags


def paginate(
    items: list[dict[str, Any]], query: dict[str, str], path: str, key: Any = None
) -> dict[str, Any]:
    """Kong's page: ``{"data", "offset", "next"}``; ``items`` in their order, ``key`` gives each one's position."""
    size = _page_size(query)
    position_of = key or (lambda item: [item.get("created_at"), item.get("id")])
    start = 0
    if "offset" in query:
        after = _decode_offset(query["offset"])
        start = len(items)
        for i, item in enumerate(items):
            if position_of(item) > after:
                start = i
                break
    page = items[start : start + size]
    body: dict[str, Any] = {"data": page, "next": None}
    if start + size < len(items) and page:
        token = _encode_offset(position_of(page[-1]))
        body["offset"] = token
        extra = f"&tags={quote(query['tags'], safe='')}" if "tags" in query else ""
        body["next"] = f"{path}?offset={quote(token, safe='')}&size={size}{extra}"
    return body


def _sorted(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entities, key=lambda item: (item.get("created_at") or 0, item["id"]))


# -- the application ------------------------------------------------------------------------------------------
class AdminApi:
    def __init__(self, gateway: GatewayStore) -> None:
        self.gateway = gateway
        self.node_id = str(uuid.uuid4())

    async def handle(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except KongError as exc:
            return JSONResponse(exc.body(), exc.status)
        except Plain as exc:
            return JSONResponse({"message": exc.message}, exc.status)

    async def _dispatch(self, request: Request) -> Response:
        segments = [s for s in request.url.path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        workspace = DEFAULT_WORKSPACE
        prefix = ""
        if segments and segments[0] not in ROOT_WORDS:
            workspace = segments.pop(0)
            if not e.NAME_RE.match(workspace):
                raise not_found()
            prefix = f"/{workspace}"
        method = request.method.upper()
        query = dict(request.query_params)
        path = prefix + ("/" + "/".join(segments) if segments else "")
        if not segments:
            if method != "GET":
                raise not_allowed()
            return JSONResponse(await self._root(workspace))
        head = segments[0]
        if head == "status":
            if len(segments) != 1:
                raise not_found()
            if method != "GET":
                raise not_allowed()
            ws = await self.gateway.workspace(workspace)
            return JSONResponse(
                {
                    "database": {"reachable": True},
                    "server": {"connections_accepted": 0, "connections_active": 0, "total_requests": 0},
                    "memory": {"workers_lua_vms": [], "lua_shared_dicts": {}},
                    "configuration_hash": ws.configuration_hash(),
                }
            )
        if head == "tags":
            if method != "GET":
                raise not_allowed()
            if len(segments) > 2:
                raise not_found()
            return JSONResponse(await self._tags(workspace, segments[1] if len(segments) == 2 else None, query, path))  # fmt: skip
        if head == "config":
            if len(segments) != 1:
                raise not_found()
            return await self._config(request, workspace, query)
        if head not in TOP_LEVEL:
            raise not_found()
        collection = head
        if len(segments) == 1:
            return await self._collection(request, workspace, collection, None, query, path)
        key = segments[1]
        if len(segments) == 2:
            return await self._entity(request, workspace, collection, key, None)
        ws = await self.gateway.workspace(workspace)
        word = segments[2]
        nested = NESTED.get((collection, word))
        if nested is not None:
            parent = ws.find(collection, key)
            if parent is None:
                raise not_found()
            child_collection, fk = nested
            scope = (fk, parent["id"])
            if len(segments) == 3:
                return await self._collection(request, workspace, child_collection, scope, query, path)
            if len(segments) == 4:
                return await self._entity(request, workspace, child_collection, segments[3], scope)
            raise not_found()
        if len(segments) == 3 and word in KINDS[collection].foreign:
            if method != "GET":
                raise not_allowed()
            child = ws.find(collection, key)
            ref = child.get(word) if child else None
            parent_entity = ws.entities[KINDS[collection].foreign[word]].get(ref["id"]) if isinstance(ref, dict) else None  # fmt: skip
            if parent_entity is None:
                raise not_found()
            return JSONResponse(parent_entity)
        raise not_found()

    async def _collection(
        self,
        request: Request,
        workspace: str,
        collection: str,
        scope: tuple[str, str] | None,
        query: dict[str, str],
        path: str,
    ) -> Response:
        method = request.method.upper()
        if method == "GET":
            ws = await self.gateway.workspace(workspace)
            wanted = tag_filter(query)
            _page_size(query)
            if scope is None:
                candidates = list(ws.entities[collection].values())
            else:
                candidates = [
                    ws.entities[c][i] for c, i in ws.children.get(scope[1], ()) if c == collection
                ]  # fmt: skip
            items = _sorted([item for item in candidates if _matches(item, wanted)])
            return JSONResponse(paginate(items, query, path))
        if method == "POST":
            body = await read_body(request)
            entity = await self.gateway.create(workspace, collection, body, scope)
            return JSONResponse(entity, 201)
        raise not_allowed()

    async def _entity(
        self, request: Request, workspace: str, collection: str, key: str, scope: tuple[str, str] | None
    ) -> Response:
        method = request.method.upper()
        if method == "GET":
            ws = await self.gateway.workspace(workspace)
            found = ws.find(collection, key, scope)
            if found is None or (scope is not None and (found.get(scope[0]) or {}).get("id") != scope[1]):
                raise not_found()
            return JSONResponse(found)
        if method == "PUT":
            body = await read_body(request)
            return JSONResponse(await self.gateway.upsert(workspace, collection, key, body, scope))
        if method == "PATCH":
            body = await read_body(request)
            return JSONResponse(await self.gateway.update(workspace, collection, key, body, scope))
        if method == "DELETE":
            await self.gateway.delete(workspace, collection, key, scope)
            return Response(status_code=204)
        raise not_allowed()

    async def _config(self, request: Request, workspace: str, query: dict[str, str]) -> Response:
        """Kong's ``/config``: GET the workspace as a declarative file, POST one to replace the workspace."""
        from isthmus.gateway import declarative

        method = request.method.upper()
        if method == "GET":
            ws = await self.gateway.workspace(workspace)
            tags = tuple(t for t in query.get("select_tags", "").split(",") if t)
            return JSONResponse({"config": declarative.dump_yaml(declarative.export(ws, tags))})
        if method != "POST":
            raise not_allowed()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > declarative.MAX_FILE_BYTES:
                raise Plain(413, "Configuration does not fit in Kong cache")
        doc = await asyncio.to_thread(
            declarative.request_document, b"".join(chunks), request.headers.get("content-type", "")
        )
        flatten = query.get("flatten_errors") in ("1", "true")
        dry_run = query.get("dry_run") in ("1", "true")
        try:
            result = await declarative.sync(self.gateway, workspace, doc, dry_run=dry_run)
        except KongError as exc:
            body = exc.body()
            if flatten:
                body["flattened_errors"] = getattr(exc, "flattened", [])
            return JSONResponse(body, exc.status)
        if query.get("check_hash") == "1" and not result.diff.changes():
            return Response(status_code=304)
        if dry_run:
            return JSONResponse(result.diff.report())
        if query.get("changes") in ("1", "true"):
            return JSONResponse(result.diff.report(), 201)
        return JSONResponse(declarative.as_kong_body(result.desired), 201)

    async def _root(self, workspace: str) -> dict[str, Any]:
        ws = await self.gateway.workspace(workspace)
        enabled = sorted({p["name"] for p in ws.entities["plugins"].values()})
        return {
            "version": KONG_VERSION,
            "tagline": "Welcome to kong",
            "edition": "community",
            "hostname": socket.gethostname(),
            "node_id": self.node_id,
            "lua_version": "Isthmus",
            "plugins": {
                "available_on_server": {name: {"version": KONG_VERSION} for name in sorted(plugin_kinds())},
                "enabled_in_cluster": enabled,
            },
            "configuration": {"database": "isthmus", "router_flavor": "traditional_compatible"},
            "configuration_hash": ws.configuration_hash(),
        }

    async def _tags(
        self, workspace: str, tag: str | None, query: dict[str, str], path: str
    ) -> dict[str, Any]:
        ws: Workspace = await self.gateway.workspace(workspace)
        rows = []
        for collection in sorted(ws.entities):
            for eid in sorted(ws.entities[collection]):
                for t in ws.entities[collection][eid].get("tags") or ():
                    if tag is None or t == tag:
                        rows.append({"entity_name": collection.replace("-", ""), "entity_id": eid, "tag": t})
        rows.sort(key=lambda r: (r["tag"], r["entity_name"], r["entity_id"]))
        return paginate(rows, query, path, key=lambda r: [r["tag"], r["entity_name"], r["entity_id"]])


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_admin_app(gateway: GatewayStore, auth: Any = None) -> FastAPI:
    """The Admin API application; ``auth`` (an :class:`isthmus.auth.Auth`): the same rule as the Kuma API
    (loopback is admin unless turned off, Bearer user tokens, writes need mesh-system:admin)."""
    app = FastAPI(title="Isthmus gateway Admin API (Kong)", docs_url=None, redoc_url=None, openapi_url=None)
    api = AdminApi(gateway)

    async def endpoint(request: Request) -> Response:
        return await api.handle(request)

    app.add_api_route("/{path:path}", endpoint, methods=ALL_METHODS, include_in_schema=False)
    if auth is not None:
        from isthmus.cp.api.auth import install

        install(app, auth, gateway.store)
    return app
