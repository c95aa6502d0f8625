"""Aggregated read-only views for the web UI (``/gui``), on the REST API with its authentication.

* ``GET /meshes/{mesh}/services/_stats``: per service its instances, request rate, error rate and p99, from the
  data planes' Envoy stats the control plane scrapes (:mod:`isthmus.cp.stats_scraper`, running while read);
* ``GET /meshes/{mesh}/_topology``: who calls whom: an edge per (source service, destination service) from the
  proxies' clusters, with the rates of the outbound cluster stats;
* ``GET /meshes/{mesh}/_policies``: every policy of the mesh with the proxies its targetRef selects and whether
  its targetRefs resolve (the ``_status`` view of each);
* ``GET /gateway/_workspaces`` and ``GET /gateway/{workspace}/_overview``: Kong's entities of a workspace
  (services, routes, consumers, plugins, upstreams) and the gateway proxies serving it, read from the same
  :class:`~isthmus.gateway.store.GatewayStore` as the Admin API (plugin secrets redacted, no credentials).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field, ValidationError

from isthmus.cp.api.errors import ApiError, error_responses
from isthmus.cp.state import ControlPlaneState
from isthmus.cp.stats_scraper import Traffic, edges, services
from isthmus.gateway.entities import NAME_RE
from isthmus.gateway.store import KINDS, SCOPE_PREFIX, GatewayStore
from isthmus.policies.status import policy_target_status
from isthmus.resources.registry import from_record, to_document
from isthmus.store.base import NotFound
from isthmus.xds.node import node_id_or_none

MAX_ITEMS = 1000  # per list in one answer (the totals say how many there are)
WORKSPACE_LABEL = "isthmus.io/gateway-workspace"
GATEWAY_COLLECTIONS = ("services", "routes", "consumers", "plugins", "upstreams")
_SECRET = re.compile(r"password|secret|private_key|token", re.IGNORECASE)
REDACTED = "[redacted]"


# -- response shapes -----------------------------------------------------------------------------------------
class TrafficView(BaseModel):
    requestRate: float = Field(description="requests per second over the last scrape interval")
    errorRate: float = Field(description="the fraction of those requests answered 5xx (0..1)")
    errorsPerSecond: float
    connectionRate: float = Field(description="new upstream connections per second (TCP services)")
    requests: int = Field(description="requests counted since the proxies' Envoys started")
    errors: int
    p99Ms: float | None = Field(
        description="the 99th percentile of the request duration (the slowest instance)"
    )


class ServiceStats(BaseModel):
    name: str
    instances: int = Field(description="data planes of the service in the mesh")
    online: int
    scraped: int = Field(description="instances whose Envoy stats were read in the last round")
    traffic: TrafficView | None


class ServiceStatsPage(BaseModel):
    mesh: str
    interval: float = Field(description="seconds between two scrapes")
    lastScrape: datetime | None
    services: list[ServiceStats]
    unreachable: dict[str, str] = Field(description="data planes whose stats could not be read, and why")


class TopologyNode(BaseModel):
    name: str
    kind: str = Field(description="service | gateway | external")
    instances: int


class TopologyEdge(BaseModel):
    source: str
    destination: str
    observed: bool = Field(description="whether traffic was seen (else: a configured outbound only)")
    traffic: TrafficView | None


class Topology(BaseModel):
    mesh: str
    nodes: list[TopologyNode]
    edges: list[TopologyEdge]


class MeshPolicy(BaseModel):
    type: str
    plural: str
    name: str
    modificationTime: datetime
    targetRefs: list[dict[str, Any]]
    selectedDataplanes: list[str]
    ok: bool | None = Field(description="whether every targetRef resolves; null until the mesh is generated")


class MeshPolicies(BaseModel):
    mesh: str
    total: int
    items: list[MeshPolicy]


class GatewayProxy(BaseModel):
    mesh: str
    name: str
    online: bool


class WorkspaceSummary(BaseModel):
    name: str
    counts: dict[str, int]
    proxies: list[GatewayProxy]


class Workspaces(BaseModel):
    items: list[WorkspaceSummary]


class WorkspaceOverview(BaseModel):
    workspace: str
    configurationHash: str
    counts: dict[str, int]
    services: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    consumers: list[dict[str, Any]]
    plugins: list[dict[str, Any]]
    upstreams: list[dict[str, Any]]
    proxies: list[GatewayProxy]


# -- helpers --------------------------------------------------------------------------------------------------
def traffic_view(t: Traffic) -> dict[str, Any]:
    return {
        "requestRate": round(t.request_rate, 3),
        "errorRate": round(t.error_rate / t.request_rate, 4) if t.request_rate > 0 else 0.0,
        "errorsPerSecond": round(t.error_rate, 3),
        "connectionRate": round(t.connection_rate, 3),
        "requests": t.requests,
        "errors": t.errors,
        "p99Ms": t.p99_ms,
    }


def redact_secrets(value: Any) -> Any:
    """A plugin's configuration with the values of secret-looking fields replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if _SECRET.search(k) and isinstance(v, str) and v else redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


def _dataplane_services(spec: dict[str, Any]) -> tuple[list[str], bool]:
    """The services a Dataplane serves (its inbounds', or its gateway's) and whether it is a gateway."""
    net = spec.get("networking") or {}
    gateway = net.get("gateway")
    if isinstance(gateway, dict):
        service = (gateway.get("tags") or {}).get("kuma.io/service")
        return ([str(service)] if service else []), True
    found: list[str] = []
    for inbound in net.get("inbound") or []:
        service = ((inbound or {}).get("tags") or {}).get("kuma.io/service")
        if service and service not in found:
            found.append(str(service))
    return found, False


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter(tags=["ui"])
    registry = state.registry
    scraper = state.stats

    async def require_mesh(mesh: str) -> None:
        if await state.store.get("Mesh", "", mesh) is None:
            raise NotFound("Mesh", "", mesh)

    def online(mesh: str, name: str) -> bool:
        nid = node_id_or_none(mesh, name)
        node = state.insights.nodes.get(nid) if nid else None
        return bool(node and node.online)

    @router.get(
        "/meshes/{mesh}/services/_stats",
        response_model=None,
        responses={200: {"model": ServiceStatsPage}, **error_responses(404)},
    )
    async def service_stats(mesh: str) -> dict[str, Any]:
        """Request rate, error rate and p99 per service of the mesh, from its data planes' Envoy stats."""
        await require_mesh(mesh)
        instances: dict[str, list[str]] = {}
        for record in (await state.store.list("Dataplane", mesh)).items:
            for service in _dataplane_services(record.spec)[0]:
                instances.setdefault(service, []).append(record.name)
        observed = {}
        scraped: dict[str, int] = {}
        unreachable: dict[str, str] = {}
        last = None
        if scraper is not None:
            scraper.touch()
            proxies = scraper.traffic(mesh)
            observed = {s.service: s for s in services(proxies)}
            scraped = {s.service: s.instances for s in observed.values()}
            unreachable = scraper.failures(mesh)
            last = scraper.last_round
        items = []
        for name in sorted(set(instances) | set(observed)):
            members = instances.get(name, [])
            item = observed.get(name)
            items.append(
                {
                    "name": name,
                    "instances": len(members),
                    "online": sum(1 for m in members if online(mesh, m)),
                    "scraped": scraped.get(name, 0),
                    "traffic": traffic_view(item.traffic) if item is not None else None,
                }
            )
        return {
            "mesh": mesh,
            "interval": scraper.interval if scraper is not None else 0.0,
            "lastScrape": datetime.fromtimestamp(last, UTC).isoformat().replace("+00:00", "Z")
            if last
            else None,
            "services": items,
            "unreachable": unreachable,
        }

    @router.get(
        "/meshes/{mesh}/_topology",
        response_model=None,
        responses={200: {"model": Topology}, **error_responses(404)},
    )
    async def topology(mesh: str) -> dict[str, Any]:
        """Who calls whom: the services of the mesh and an edge per caller and destination service."""
        await require_mesh(mesh)
        nodes: dict[str, dict[str, Any]] = {}
        declared: set[tuple[str, str]] = set()
        for record in (await state.store.list("Dataplane", mesh)).items:
            served, gateway = _dataplane_services(record.spec)
            for service in served:
                node = nodes.setdefault(service, {"name": service, "kind": "service", "instances": 0})
                node["instances"] += 1
                if gateway:
                    node["kind"] = "gateway"
            nid = node_id_or_none(mesh, record.name)
            proxy = state.reconciler.proxies.get(nid) if nid else None
            if proxy is not None and served:
                declared.update((served[0], destination) for destination in proxy.services)
        observed = {}
        if scraper is not None:
            scraper.touch()
            observed = {(e.source, e.destination): e for e in edges(scraper.traffic(mesh))}
        items = []
        for source, destination in sorted(declared | set(observed)):
            for name in (source, destination):
                nodes.setdefault(name, {"name": name, "kind": "external", "instances": 0})
            edge = observed.get((source, destination))
            seen = edge is not None and (edge.traffic.requests > 0 or edge.traffic.connection_rate > 0)
            items.append(
                {
                    "source": source,
                    "destination": destination,
                    "observed": seen,
                    "traffic": traffic_view(edge.traffic) if edge is not None else None,
                }
            )
        return {"mesh": mesh, "nodes": sorted(nodes.values(), key=lambda n: n["name"]), "edges": items}

    @router.get(
        "/meshes/{mesh}/_policies",
        response_model=None,
        responses={200: {"model": MeshPolicies}, **error_responses(404)},
    )
    async def mesh_policies(mesh: str) -> dict[str, Any]:
        """Every policy of the mesh, with the data planes it selects and whether its targetRefs resolve."""
        await require_mesh(mesh)
        ctx = state.reconciler.contexts.get(mesh)
        items: list[dict[str, Any]] = []
        total = 0
        for rtype in sorted(registry.policies(), key=lambda t: t.kind):
            if rtype.internal:
                continue
            page = await state.store.list(rtype.kind, mesh, limit=MAX_ITEMS)
            total += page.total
            for record in page.items:
                if len(items) >= MAX_ITEMS:
                    break
                doc = to_document(record, registry)
                entry: dict[str, Any] = {
                    "type": rtype.kind,
                    "plural": rtype.plural,
                    "name": record.name,
                    "modificationTime": doc["modificationTime"],
                    "targetRefs": [],
                    "selectedDataplanes": [],
                    "ok": None,
                }
                if ctx is not None:
                    try:
                        status = policy_target_status(ctx, from_record(record, registry))
                    except ValidationError:  # stored by an older version, no longer valid: reported elsewhere
                        entry["ok"] = False
                    else:
                        entry.update(
                            targetRefs=status["targetRefs"],
                            selectedDataplanes=status["selectedDataplanes"],
                            ok=status["ok"],
                        )
                items.append(entry)
        return {"mesh": mesh, "total": total, "items": items}

    workspace_param: Any = Path(description="a Kong workspace", pattern=NAME_RE.pattern, max_length=128)

    async def gateway_proxies() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for record in (await state.store.list("Dataplane")).items:
            workspace = (record.labels or {}).get(WORKSPACE_LABEL)
            if workspace:
                found.setdefault(workspace, []).append(
                    {"mesh": record.mesh, "name": record.name, "online": online(record.mesh, record.name)}
                )
        return found

    async def workspace_names(proxies: dict[str, list[dict[str, Any]]]) -> set[str]:
        """``default``, the workspaces with entities and those gateway proxies name (only these are loaded:
        asking for any other name loads nothing)."""
        names = {"default", *proxies}
        for collection in GATEWAY_COLLECTIONS:
            for record in (await state.store.list(KINDS[collection].record_type)).items:
                if record.mesh.startswith(SCOPE_PREFIX):
                    names.add(record.mesh.removeprefix(SCOPE_PREFIX))
        return names

    def gateway_store() -> GatewayStore:
        return state.gateway_store or GatewayStore(state.store)

    @router.get("/gateway/_workspaces", response_model=None, responses={200: {"model": Workspaces}})
    async def workspaces() -> dict[str, Any]:
        """The Kong workspaces that have entities or gateway proxies, with their entity counts."""
        proxies = await gateway_proxies()
        store = gateway_store()
        items = []
        for name in sorted(await workspace_names(proxies)):
            ws = await store.workspace(name)
            items.append(
                {
                    "name": name,
                    "counts": {c: len(ws.entities[c]) for c in GATEWAY_COLLECTIONS},
                    "proxies": proxies.get(name, []),
                }
            )
        return {"items": items}

    @router.get(
        "/gateway/{workspace}/_overview",
        response_model=None,
        responses={200: {"model": WorkspaceOverview}, **error_responses(404)},
    )
    async def workspace_overview(workspace: str = workspace_param) -> dict[str, Any]:
        """A workspace's services, routes, consumers (without credentials), plugins (secrets redacted) and
        upstreams, at most 1000 of each, and the gateway proxies serving it."""
        proxies = await gateway_proxies()
        if workspace not in await workspace_names(proxies):
            raise ApiError(
                404, "Not found", f"workspace {workspace!r} has no entities and no gateway proxies"
            )
        ws = await gateway_store().workspace(workspace)

        def listed(collection: str) -> list[dict[str, Any]]:
            entities = sorted(
                ws.entities[collection].values(), key=lambda e: (e.get("created_at") or 0, e["id"])
            )
            return [redact_secrets(e) for e in entities[:MAX_ITEMS]]

        return {
            "workspace": workspace,
            "configurationHash": ws.configuration_hash(),
            "counts": {c: len(ws.entities[c]) for c in GATEWAY_COLLECTIONS},
            **{c: listed(c) for c in GATEWAY_COLLECTIONS},
            "proxies": proxies.get(workspace, []),
        }

    return router
