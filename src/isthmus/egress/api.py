"""REST views of zone proxies (Kuma's paths): ``GET /zoneingresses+insights`` / ``/zoneegresses+insights`` (Kuma's
overview shape, ``[/{name}]``) and ``GET /zoneingresses/{name}/_config`` / ``/zoneegresses/{name}/_config`` (what
the control plane gives that proxy: its SNI routes with zones and weights, and its Envoy resources); and
``GET /meshes/{mesh}/dataplanes/{name}/_zones`` (a sidecar's clusters per zone: priority, weight, which ingress or
egress carries it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import json_format

from isthmus.cp.api.errors import ApiError, error_responses
from isthmus.cp.api.resources import OffsetQuery, SizeQuery
from isthmus.cp.state import ControlPlaneState
from isthmus.egress.build import build_egress_ir
from isthmus.egress.inspect import cluster_zones, egress_view, ingress_view
from isthmus.egress.node import egress_node_id
from isthmus.ingress.build import build_ingress_ir
from isthmus.ingress.node import ingress_node_id
from isthmus.ingress.remote import proxy_zone
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.resources.registry import from_record, to_document
from isthmus.store.base import NotFound, Record
from isthmus.xds import types
from isthmus.xds.translate.secrets import redact_private_keys

KINDS = {"zoneingresses": "ZoneIngress", "zoneegresses": "ZoneEgress"}
OK: dict[int | str, dict[str, Any]] = {200: {"description": "the zone proxy's view"}}


def _node_id(kind: str, name: str) -> str:
    return ingress_node_id(name) if kind == "ZoneIngress" else egress_node_id(name)


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter()
    registry = state.registry

    async def record_of(plural: str, name: str) -> Record:
        kind = KINDS[plural]
        record = await state.store.get(kind, "", name)
        if record is None:
            raise NotFound(kind, "", name)
        return record

    def overview(record: Record) -> dict[str, Any]:
        doc = to_document(record, registry)
        lower = record.type[0].lower() + record.type[1:]
        spec = {k: v for k, v in doc.items() if k not in ("type", "name", "creationTime", "modificationTime")}
        return {
            "type": f"{record.type}Overview",
            "name": record.name,
            "creationTime": doc.get("creationTime"),
            "modificationTime": doc.get("modificationTime"),
            lower: spec,
            f"{lower}Insight": state.insights.document(_node_id(record.type, record.name)),
        }

    for plural in KINDS:
        _routes(router, plural, record_of, overview, state)

    @router.get(
        "/meshes/{mesh}/dataplanes/{name}/_zones",
        tags=["inspect"],
        response_model=None,
        responses={**OK, **error_responses(404, 409)},
    )
    async def dataplane_zones(mesh: str, name: str) -> dict[str, Any]:
        """Each cluster of the proxy with its zones: priority, weight and the ingress/egress that carries it."""
        if await state.store.get("Dataplane", mesh, name) is None:
            raise NotFound("Dataplane", mesh, name)
        ctx = state.reconciler.contexts.get(mesh)
        if ctx is None or name not in ctx.dataplanes:
            raise ApiError(
                409, "Not ready", f"the control plane has not processed dataplane {name!r} yet; retry"
            )
        mtls = ctx.spec.enabled_backend is not None
        ir = build_proxy_ir(ctx, name, Identity("", "") if mtls else None)
        return {
            "mesh": mesh,
            "name": name,
            "zone": proxy_zone(ctx, ctx.dataplanes[name]),
            "clusters": [
                {"cluster": c.name, "service": c.service, "zones": cluster_zones(ir, ctx, c.name)}
                for c in ir.clusters
                if c.service
            ],
        }

    return router


def _routes(router: APIRouter, plural: str, record_of: Any, overview: Any, state: ControlPlaneState) -> None:
    """The three views of one kind, on fixed paths (``/zoneingresses+insights`` ...)."""
    kind = KINDS[plural]
    registry = state.registry

    async def list_overviews(
        request: Request, offset: OffsetQuery = 0, size: SizeQuery = 100
    ) -> dict[str, Any]:
        page = await state.store.list(kind, "", offset=offset, limit=size)
        nxt = None
        if offset + size < page.total:
            nxt = str(request.url.include_query_params(offset=offset + size, size=size))
        return {"total": page.total, "items": [overview(r) for r in page.items], "next": nxt}

    async def get_overview(name: str) -> dict[str, Any]:
        return overview(await record_of(plural, name))  # type: ignore[no-any-return]

    async def config(name: str) -> dict[str, Any]:
        record = await record_of(plural, name)
        res = from_record(record, registry)
        contexts = dict(state.reconciler.contexts)
        zone = state.reconciler.zone
        if kind == "ZoneIngress":
            view = ingress_view(build_ingress_ir(res, contexts, zone))
        else:
            view = egress_view(build_egress_ir(res, contexts, zone))
        nid = _node_id(kind, name)
        snapshot = state.cache.get_snapshot(nid)
        xds: dict[str, list[dict[str, Any]]] = {}
        versions: dict[str, str] = {}
        if snapshot is not None:
            for type_url in types.ORDER:
                xds[type_url] = [
                    redact_private_keys(json_format.MessageToDict(r.packed))
                    for _, r in sorted(snapshot.resources.get(type_url, {}).items())
                ]
                versions[type_url] = snapshot.version(type_url)
        return {"type": kind, "name": name, "nodeId": nid, **view, "xds": xds, "versions": versions}

    common: dict[str, Any] = {"tags": ["inspect"], "response_model": None}
    router.add_api_route(
        f"/{plural}+insights",
        list_overviews,
        methods=["GET"],
        name=f"list_{plural}_overviews",
        responses={**OK, **error_responses(400)},
        **common,
    )
    router.add_api_route(
        f"/{plural}+insights/{{name}}",
        get_overview,
        methods=["GET"],
        name=f"get_{plural}_overview",
        responses={**OK, **error_responses(404)},
        **common,
    )
    router.add_api_route(
        f"/{plural}/{{name}}/_config",
        config,
        methods=["GET"],
        name=f"{plural}_config",
        responses={**OK, **error_responses(404)},
        **common,
    )
