"""CRUD endpoints, on Kuma's paths: ``/meshes/{name}`` and ``/meshes/{mesh}/{plural}/{name}``."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from isthmus.cp.api.errors import ApiError, error_responses
from isthmus.cp.api.models import Empty, ResourceDocument, ResourcePage
from isthmus.cp.api.redaction import redact_mesh_document, restore_redacted_keys
from isthmus.cp.state import ControlPlaneState
from isthmus.policies.defaults import initial_policies
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import FieldError, ResourceValidationError
from isthmus.resources.loading import load_body
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import (
    Registry,
    Resource,
    ResourceType,
    Scope,
    from_record,
    parse_document,
    to_document,
)
from isthmus.store.base import MAX_OFFSET, NotFound, Op, OpKind, Record

MAX_PAGE = 1000

OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="how many items to skip (0..1000000000)")]
SizeQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="the page size (1..1000)")]
IfMatchHeader = Annotated[
    str | None,
    Header(
        pattern=r'^(W/)?"?[0-9]+"?$',
        description="only if the resource is at this version (its ETag); 409 otherwise",
    ),
]
ETAG_HEADER = {"ETag": {"description": "the resource version", "schema": {"type": "string"}}}


async def read_body(request: Request) -> Any:
    """The body as JSON or YAML, with the limits of :mod:`isthmus.resources.loading` (no aliases, 400 levels
    of nesting, plain JSON values); a large YAML body is parsed off the event loop."""
    raw = await request.body()
    if not raw.strip():
        raise ResourceValidationError([FieldError("", "request body is empty")])
    if len(raw) > 64 * 1024:
        return await asyncio.to_thread(load_body, raw)
    return load_body(raw)


def _expected(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    try:
        return int(if_match.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise ApiError(400, "Bad request", "If-Match must carry the resource version (an integer)") from None


def _page(
    request: Request, items: list[dict[str, Any]], total: int, offset: int, size: int
) -> dict[str, Any]:
    nxt = None
    if offset + size < total:
        nxt = str(request.url.include_query_params(offset=offset + size, size=size))
    return {"total": total, "items": items, "next": nxt}


def _initial_policy_ops(mesh: Resource, registry: Registry) -> list[Op]:
    """The default policies of a new mesh, written in the same transaction as the mesh itself."""
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    return [
        Op(OpKind.CREATE, kind, mesh.name, name, spec=policy)
        for kind, name, policy in initial_policies(mesh.name, spec.skip_creating_initial_policies, registry)
    ]


def _check_membership(dataplane: DataplaneSpec, mesh: Resource, mesh_name: str) -> None:
    """Kuma's mesh membership (``Mesh.constraints.dataplaneProxy``), checked when a Dataplane is created or
    updated, as Kuma's dataplane manager does; Dataplanes already in the mesh stay when the Mesh changes."""
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    problem = dataplane.membership_problem(mesh_name, spec.dataplane_constraints)
    if problem is not None:
        raise ResourceValidationError([FieldError(*problem)])


def one_of(words: Iterable[str]) -> str:
    """A regex matching exactly one of ``words``: a path parameter that must be one of them is validated, and a
    URL with another word is answered as one that names no path (404, or 405 with ``Allow``)."""
    return "^(?:" + "|".join(re.escape(w) for w in sorted(words)) + ")$"


def body_schema(kinds: list[str], *, mesh_scoped: bool) -> dict[str, Any]:
    """``openapi_extra`` for a PUT: the body is a resource document, JSON or YAML. Only its envelope is declared;
    the control plane checks the kind's specification and names each invalid field (400)."""
    properties: dict[str, Any] = {
        "type": {"type": "string", "enum": kinds},
        "name": {"type": "string", "description": "the name in the path"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    if mesh_scoped:
        properties["mesh"] = {"type": "string", "description": "the mesh in the path (the default)"}
    schema = {
        "type": "object",
        "required": ["type", "name"],
        "properties": properties,
        "additionalProperties": True,
    }
    return {
        "requestBody": {
            "required": True,
            "description": "the resource in Kuma's Universal format",
            "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}},
        }
    }


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter()
    registry = state.registry
    mesh_scoped = [t for t in registry.public() if t.scope is Scope.MESH]
    # A default value, not an Annotated alias: the route signatures are evaluated against the module's globals.
    plural_path: Any = Path(
        description="the resource type's plural, as listed by /_resources",
        pattern=one_of(t.plural for t in mesh_scoped),
        json_schema_extra={"enum": sorted(t.plural for t in mesh_scoped)},
    )

    def rtype_for(plural: str) -> ResourceType:
        rtype = registry.plural(plural)
        if rtype is None or rtype.internal or rtype.scope is not Scope.MESH:
            raise ApiError(404, "Not found", f"unknown resource type {plural!r}")
        return rtype

    def document(record: Record) -> dict[str, Any]:
        """A record as the API serves it: a Mesh's inline CA keys redacted (``redaction.py``)."""
        doc = to_document(record, registry)
        return redact_mesh_document(doc) if record.type == "Mesh" else doc

    def respond(record: Record, status: int) -> JSONResponse:
        return JSONResponse(document(record), status_code=status, headers={"ETag": f'"{record.version}"'})

    async def put(rtype: ResourceType, mesh: str, name: str, body: Any, if_match: str | None) -> JSONResponse:
        parse = functools.partial(
            parse_document,
            body,
            registry,
            expect_type=rtype,
            expect_mesh=mesh if rtype.scope is Scope.MESH else None,
            expect_name=name,
            context={"on_control_plane": True},
        )
        if rtype.kind == "Mesh":
            stored = await state.store.get("Mesh", "", name)
            restore_redacted_keys(body, stored.spec if stored is not None else None)
            res = await asyncio.to_thread(parse)  # a provided CA's files are read: blocking I/O
        else:
            res = parse()
        mesh_record = await state.store.get("Mesh", "", res.mesh) if rtype.scope is Scope.MESH else None
        if rtype.scope is Scope.MESH and mesh_record is None:
            raise ResourceValidationError([FieldError("mesh", f"mesh {res.mesh!r} does not exist")])
        if mesh_record is not None and isinstance(res.spec, DataplaneSpec):
            _check_membership(res.spec, from_record(mesh_record, registry), res.mesh)
        existed = await state.store.get(rtype.kind, res.mesh, name) is not None
        labels = dict(res.labels)
        if state.write_guard is not None:  # multi-zone: copies are read-only, origin labels added
            labels = await state.write_guard.check_put(rtype, res.mesh, name, labels)
        ops = [
            Op(
                OpKind.UPSERT,
                rtype.kind,
                res.mesh,
                name,
                spec=res.spec_dict(),
                labels=labels,
                expected_version=_expected(if_match) if existed else 0,
            )
        ]
        if rtype.kind == "Mesh" and not existed:
            ops.extend(_initial_policy_ops(res, registry))
        record = (await state.store.write(ops))[0]
        assert record is not None
        return respond(record, 200 if existed else 201)

    async def list_docs(
        request: Request, kind: str, mesh: str | None, offset: int, size: int
    ) -> dict[str, Any]:
        page = await state.store.list(kind, mesh, offset=offset, limit=size)
        return _page(request, [document(r) for r in page.items], page.total, offset, size)

    got = {"model": ResourceDocument, "description": "the resource", "headers": ETAG_HEADER}
    put_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": ResourceDocument, "description": "updated", "headers": ETAG_HEADER},
        201: {"model": ResourceDocument, "description": "created", "headers": ETAG_HEADER},
    }

    # -- meshes (global) --------------------------------------------------------------------------------------
    @router.get(
        "/meshes",
        tags=["meshes"],
        response_model=None,
        responses={200: {"model": ResourcePage, "description": "a page of meshes"}, **error_responses(400)},
    )
    async def list_meshes(request: Request, offset: OffsetQuery = 0, size: SizeQuery = 100) -> dict[str, Any]:
        return await list_docs(request, "Mesh", None, offset, size)

    @router.get(
        "/meshes/{name}", tags=["meshes"], response_model=None, responses={200: got, **error_responses(404)}
    )
    async def get_mesh(name: str) -> JSONResponse:
        record = await state.store.get("Mesh", "", name)
        if record is None:
            raise NotFound("Mesh", "", name)
        return respond(record, 200)

    @router.put(
        "/meshes/{name}",
        tags=["meshes"],
        status_code=201,
        response_model=None,
        responses={**put_responses, **error_responses(400, 409)},
        openapi_extra=body_schema(["Mesh"], mesh_scoped=False),
    )
    async def put_mesh(name: str, request: Request, if_match: IfMatchHeader = None) -> JSONResponse:
        return await put(registry.kind("Mesh"), "", name, await read_body(request), if_match)  # type: ignore[arg-type]

    @router.delete(
        "/meshes/{name}",
        tags=["meshes"],
        response_model=None,
        responses={
            200: {"model": Empty, "description": "deleted, with everything in it"},
            **error_responses(404, 409),
        },
    )
    async def delete_mesh(name: str) -> dict[str, Any]:
        if await state.store.get("Mesh", "", name) is None:
            raise NotFound("Mesh", "", name)
        if state.write_guard is not None:
            await state.write_guard.check_delete(registry.kind("Mesh"), "", name)  # type: ignore[arg-type]
        ops = [Op(OpKind.DELETE, "Mesh", "", name)]
        for rtype in registry.all():  # cascade: everything that lives in the mesh goes with it, atomically
            if rtype.scope is Scope.MESH:
                page = await state.store.list(rtype.kind, name)
                ops.extend(Op(OpKind.DELETE, r.type, r.mesh, r.name) for r in page.items)
        await state.store.write(ops)
        return {}

    # -- mesh-scoped resources -----------------------------------------------------------------------------------
    @router.get(
        "/meshes/{mesh}/{plural}",
        tags=["resources"],
        response_model=None,
        responses={
            200: {"model": ResourcePage, "description": "a page of resources"},
            **error_responses(400, 404),
        },
    )
    async def list_in_mesh(
        mesh: str,
        request: Request,
        plural: str = plural_path,
        offset: OffsetQuery = 0,
        size: SizeQuery = 100,
    ) -> dict[str, Any]:
        rtype = rtype_for(plural)
        return await list_docs(request, rtype.kind, mesh, offset, size)

    @router.get(
        "/meshes/{mesh}/{plural}/{name}",
        tags=["resources"],
        response_model=None,
        responses={200: got, **error_responses(404)},
    )
    async def get_in_mesh(mesh: str, name: str, plural: str = plural_path) -> JSONResponse:
        rtype = rtype_for(plural)
        record = await state.store.get(rtype.kind, mesh, name)
        if record is None:
            raise NotFound(rtype.kind, mesh, name)
        return respond(record, 200)

    @router.put(
        "/meshes/{mesh}/{plural}/{name}",
        tags=["resources"],
        status_code=201,
        response_model=None,
        responses={**put_responses, **error_responses(400, 404, 409)},
        openapi_extra=body_schema(sorted(t.kind for t in mesh_scoped), mesh_scoped=True),
    )
    async def put_in_mesh(
        mesh: str, name: str, request: Request, plural: str = plural_path, if_match: IfMatchHeader = None
    ) -> JSONResponse:
        return await put(rtype_for(plural), mesh, name, await read_body(request), if_match)

    @router.delete(
        "/meshes/{mesh}/{plural}/{name}",
        tags=["resources"],
        response_model=None,
        responses={200: {"model": Empty, "description": "deleted"}, **error_responses(400, 404, 409)},
    )
    async def delete_in_mesh(
        mesh: str, name: str, plural: str = plural_path, if_match: IfMatchHeader = None
    ) -> Response:
        rtype = rtype_for(plural)
        if state.write_guard is not None:
            await state.write_guard.check_delete(rtype, mesh, name)
        await state.store.write(
            [Op(OpKind.DELETE, rtype.kind, mesh, name, expected_version=_expected(if_match))]
        )
        return JSONResponse({})

    # -- other global-scoped resources (Zone, ZoneIngress, ...): /{plural}[/{name}] ------------------------------
    global_types = [t for t in registry.public() if t.scope is Scope.GLOBAL and t.kind != "Mesh"]
    if not global_types:
        return router
    global_path: Any = Path(
        description="the global resource type's plural, as listed by /_resources",
        pattern=one_of(t.plural for t in global_types),
        json_schema_extra={"enum": sorted(t.plural for t in global_types)},
    )

    def global_type(plural: str) -> ResourceType:
        rtype = registry.plural(plural)
        if rtype is None or rtype.internal or rtype.scope is not Scope.GLOBAL or rtype.kind == "Mesh":
            raise ApiError(404, "Not found", f"unknown resource type {plural!r}")
        return rtype

    @router.get(
        "/{plural}",
        tags=["resources"],
        response_model=None,
        responses={
            200: {"model": ResourcePage, "description": "a page of resources"},
            **error_responses(400, 404),
        },
    )
    async def list_global(
        request: Request, plural: str = global_path, offset: OffsetQuery = 0, size: SizeQuery = 100
    ) -> dict[str, Any]:
        return await list_docs(request, global_type(plural).kind, None, offset, size)

    @router.get(
        "/{plural}/{name}",
        tags=["resources"],
        response_model=None,
        responses={200: got, **error_responses(404)},
    )
    async def get_global(name: str, plural: str = global_path) -> JSONResponse:
        rtype = global_type(plural)
        record = await state.store.get(rtype.kind, "", name)
        if record is None:
            raise NotFound(rtype.kind, "", name)
        return respond(record, 200)

    @router.put(
        "/{plural}/{name}",
        tags=["resources"],
        status_code=201,
        response_model=None,
        responses={**put_responses, **error_responses(400, 404, 409)},
        openapi_extra=body_schema(sorted(t.kind for t in global_types), mesh_scoped=False),
    )
    async def put_global(
        name: str, request: Request, plural: str = global_path, if_match: IfMatchHeader = None
    ) -> JSONResponse:
        return await put(global_type(plural), "", name, await read_body(request), if_match)

    @router.delete(
        "/{plural}/{name}",
        tags=["resources"],
        response_model=None,
        responses={200: {"model": Empty, "description": "deleted"}, **error_responses(400, 404, 409)},
    )
    async def delete_global(name: str, plural: str = global_path, if_match: IfMatchHeader = None) -> Response:
        rtype = global_type(plural)
        if state.write_guard is not None:
            await state.write_guard.check_delete(rtype, "", name)
        await state.store.write(
            [Op(OpKind.DELETE, rtype.kind, "", name, expected_version=_expected(if_match))]
        )
        return JSONResponse({})

    return router
