"""Read-only views computed by the control plane: insights, a proxy's Envoy config and its matched policies."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from google.protobuf import json_format
from pydantic import AfterValidator, ValidationError, WithJsonSchema

from isthmus.context.mesh_context import build_mesh_context
from isthmus.cp.api.errors import ApiError, error_responses
from isthmus.cp.api.models import (
    DataplaneOverview,
    DataplaneOverviewPage,
    Explanation,
    InspectRules,
    PolicyStatus,
    ProxyConfig,
    ProxyPolicies,
)
from isthmus.cp.api.resources import OffsetQuery, SizeQuery, one_of
from isthmus.cp.state import ControlPlaneState
from isthmus.policies.catalog import plugins
from isthmus.policies.explain import ExplainError, explain
from isthmus.policies.plugin import PolicyInputs
from isthmus.policies.rules_view import inspect_rules
from isthmus.policies.status import policy_target_status
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import FieldError, ResourceValidationError
from isthmus.resources.registry import Resource, from_record, to_document
from isthmus.store.base import NotFound, Record
from isthmus.xds import types
from isthmus.xds.node import node_id_or_none
from isthmus.xds.translate.secrets import redact_private_keys

REDACTED = "[redacted]"
HTTP_TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # a method or header name (RFC 9110 token)
HEADER_ITEM = HTTP_TOKEN.removesuffix("$") + "[:=]"


def _header_item(value: str) -> str:
    if not re.match(HEADER_ITEM, value):
        raise ValueError(
            "expected NAME:VALUE or NAME=VALUE, NAME made of letters, digits and !#$%&'*+.^_`|~-"
        )
    return value


# The pattern is declared in the OpenAPI document; the check gives the reason in words.
HeaderItem = Annotated[
    str, AfterValidator(_header_item), WithJsonSchema({"type": "string", "pattern": HEADER_ITEM})
]


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _redact(doc: dict[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = redact_private_keys(doc)  # no private key ever leaves through the API
    return redacted


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter()
    registry = state.registry

    async def dataplane_record(mesh: str, name: str) -> Record:
        record = await state.store.get("Dataplane", mesh, name)
        if record is None:
            raise NotFound("Dataplane", mesh, name)
        return record

    async def stored_policies(kind: str, mesh: str) -> tuple[Resource, ...]:
        """The valid stored policies of a kind (one stored by an older version and no longer valid is left out:
        the reconciler reports it)."""
        found = []
        for record in (await state.store.list(kind, mesh)).items:
            try:
                found.append(from_record(record, registry))
            except ValidationError:
                continue
        return tuple(found)

    def config_error(mesh: str, name: str) -> str | None:
        """Why the proxy's configuration is not current (its mesh, its stored record, or its own generation)."""
        error = state.reconciler.error_for(mesh, name)
        if error is None:
            return None
        if mesh in state.reconciler.mesh_errors:
            return f"mesh {mesh!r} is not generated ({error.stage}): {error.message}; last configuration kept"
        return f"{error.stage}: {error.message}"

    def overview(record: Record) -> dict[str, Any]:
        nid = node_id_or_none(record.mesh, record.name)  # None: a stored mesh with a '.' is not served
        insight = state.insights.document(nid or "")
        issued = state.certificates.get(nid) if nid else None
        insight["mTLS"] = (
            {
                "certificateExpirationTime": _iso(issued.certificate.not_after),
                "lastCertificateRegeneration": _iso(issued.issued_at),
                "certificateRegenerations": issued.generation,
                "spiffeIds": list(issued.certificate.spiffe_ids),
            }
            if issued
            else None
        )
        insight["configError"] = config_error(record.mesh, record.name)
        doc = to_document(record, registry)
        return {
            "type": "DataplaneOverview",
            "mesh": record.mesh,
            "name": record.name,
            "creationTime": doc["creationTime"],
            "modificationTime": doc["modificationTime"],
            "dataplane": {"networking": record.spec.get("networking", {})},
            "dataplaneInsight": insight,
        }

    @router.get(
        "/meshes/{mesh}/dataplanes+insights",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": DataplaneOverviewPage}, **error_responses(400)},
    )
    async def list_overviews(
        mesh: str, request: Request, offset: OffsetQuery = 0, size: SizeQuery = 100
    ) -> dict[str, Any]:
        page = await state.store.list("Dataplane", mesh, offset=offset, limit=size)
        nxt = None
        if offset + size < page.total:
            nxt = str(request.url.include_query_params(offset=offset + size, size=size))
        return {"total": page.total, "items": [overview(r) for r in page.items], "next": nxt}

    @router.get(
        "/meshes/{mesh}/dataplanes+insights/{name}",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": DataplaneOverview}, **error_responses(404)},
    )
    async def get_overview(mesh: str, name: str) -> dict[str, Any]:
        return overview(await dataplane_record(mesh, name))

    @router.get(
        "/meshes/{mesh}/dataplanes/{name}/_config",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": ProxyConfig}, **error_responses(404)},
    )
    async def config(mesh: str, name: str) -> dict[str, Any]:
        await dataplane_record(mesh, name)
        nid = node_id_or_none(mesh, name)
        snapshot = state.cache.get_snapshot(nid) if nid else None
        xds: dict[str, list[dict[str, Any]]] = {}
        versions: dict[str, str] = {}
        if snapshot is not None:
            for type_url in types.ORDER:
                items = []
                for _, res in sorted(snapshot.resources.get(type_url, {}).items()):
                    items.append(_redact(json_format.MessageToDict(res.packed)))
                xds[type_url] = items
                versions[type_url] = snapshot.version(type_url)
        return {
            "nodeId": nid or "",
            "xds": xds,
            "versions": versions,
            "error": config_error(mesh, name),
        }

    @router.get(
        "/meshes/{mesh}/dataplanes/{name}/_policies",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": ProxyPolicies}, **error_responses(404)},
    )
    async def policies(mesh: str, name: str) -> dict[str, Any]:
        record = await dataplane_record(mesh, name)
        dp = from_record(record, registry)
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        inbounds: list[dict[str, Any]] = [
            {
                "name": inbound.name or f"{inbound.address or spec.networking.address}:{inbound.port}",
                "port": inbound.port,
                "service": inbound.service,
                "policies": [],
            }
            for inbound in spec.networking.inbound
        ]
        outbounds: list[dict[str, Any]] = [
            {"port": o.port, "service": o.service, "policies": []} for o in spec.networking.outbound
        ]
        # the stored policies, so that what was just applied shows before the mesh is generated again
        stored = {p.resource_type.kind: await stored_policies(p.resource_type.kind, mesh) for p in plugins()}
        ctx = state.reconciler.contexts.get(mesh)
        if ctx is None:
            mesh_record = await state.store.get("Mesh", "", mesh)
            if mesh_record is None:
                raise NotFound("Mesh", "", mesh)
            everything = [p for kind in stored.values() for p in kind]
            ctx = build_mesh_context(from_record(mesh_record, registry), [dp], everything)
        for plugin in plugins():
            kind = plugin.resource_type.kind
            described = plugin.describe(PolicyInputs(ctx, dp, stored[kind]))
            _attach(inbounds, described.get("inbounds", []), kind)
            _attach(outbounds, described.get("outbounds", []), kind)
        return {"mesh": mesh, "name": name, "inbounds": inbounds, "outbounds": outbounds}

    @router.get(
        "/meshes/{mesh}/dataplanes/{name}/_rules",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": InspectRules}, **error_responses(404)},
    )
    async def rules(mesh: str, name: str) -> dict[str, Any]:
        """Kuma's rule view of a proxy (``kumactl inspect dataplane --type=rules``): per policy type, the to-rules,
        from-rules and inbound rules with their subsets, merged confs and origins (route-level confs included)."""
        dp = from_record(await dataplane_record(mesh, name), registry)
        by_kind = {p.resource_type.kind: await stored_policies(p.resource_type.kind, mesh) for p in plugins()}
        return inspect_rules(dp, by_kind)

    policy_plurals = sorted(t.plural for t in registry.policies() if not t.internal)
    policy_plural: Any = Path(
        description="a policy type's plural, as listed by /_resources",
        pattern=one_of(policy_plurals),
        json_schema_extra={"enum": policy_plurals},
    )

    @router.get(
        "/meshes/{mesh}/{plural}/{name}/_status",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": PolicyStatus}, **error_responses(404, 409)},
    )
    async def policy_status(mesh: str, name: str, plural: str = policy_plural) -> dict[str, Any]:
        """Whether each targetRef of a policy refers to something that exists, and which proxies it selects."""
        rtype = registry.plural(plural)
        if rtype is None or not rtype.is_policy:
            raise ApiError(404, "Not found", f"{plural!r} is not a policy type")
        record = await state.store.get(rtype.kind, mesh, name)
        if record is None:
            raise NotFound(rtype.kind, mesh, name)
        ctx = state.reconciler.contexts.get(mesh)
        if ctx is None:
            raise ApiError(409, "Not ready", f"the control plane has not processed mesh {mesh!r} yet; retry")
        return policy_target_status(ctx, from_record(record, registry))

    @router.get(
        "/meshes/{mesh}/dataplanes/{name}/_explain",
        tags=["inspect"],
        response_model=None,
        responses={200: {"model": Explanation}, **error_responses(400, 404, 409)},
    )
    async def explain_request(
        mesh: str,
        name: str,
        to: str = Query(..., min_length=1, description="destination service (kuma.io/service)"),
        path: str = Query("/", pattern="^/", description="request path, optionally with a query string"),
        method: str = Query("GET", pattern=HTTP_TOKEN, description="request method"),
        header: list[HeaderItem] = Query(
            default=[], description="request header as NAME:VALUE or NAME=VALUE"
        ),
    ) -> dict[str, Any]:
        await dataplane_record(mesh, name)
        headers: dict[str, str] = {}
        for i, item in enumerate(header):
            key, sep, value = item.replace("=", ":", 1).partition(":")
            if not sep or not key.strip():
                raise ResourceValidationError(
                    [FieldError(f"header[{i}]", "expected NAME:VALUE or NAME=VALUE")]
                )
            headers[key.strip()] = value.strip()
        if not path.startswith("/"):
            raise ResourceValidationError([FieldError("path", "must start with '/'")])
        ctx = state.reconciler.contexts.get(mesh)
        if ctx is None or name not in ctx.dataplanes:
            raise ApiError(
                409, "Not ready", f"the control plane has not processed dataplane {name!r} yet; retry"
            )
        try:
            reconciler = state.reconciler
            legs = reconciler.gateway_services(mesh, name) if reconciler.gateway_services else frozenset()
            kong = reconciler.gateway_notes(mesh, name, to) if reconciler.gateway_notes and to in legs else []
            return explain(
                ctx, name, to, path=path, method=method, headers=headers, gateway_services=legs, kong=kong
            )
        except ExplainError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ResourceValidationError([FieldError(field, reason)]) from None

    return router


def _attach(entries: list[dict[str, Any]], described: list[dict[str, Any]], kind: str) -> None:
    """Add what one policy kind's plug-in describes (its resolved configuration, or its rules) to the
    inbound/outbound entries with the same port, and the policies it names to the entry's ``policies``."""
    by_port = {d["port"]: d for d in described}
    for entry in entries:
        found = by_port.get(entry["port"])
        if found is None:
            continue
        entry[kind] = {k: v for k, v in found.items() if k not in ("port", "service")}
        names = {(p["type"], p["name"]) for p in entry["policies"]}
        for origin in found["origins"]:
            if (origin["kind"], origin["policy"]) not in names:
                entry["policies"].append({"type": origin["kind"], "name": origin["policy"]})
                names.add((origin["kind"], origin["policy"]))
