"""A Kong Service whose host is a MeshService's generated hostname is a mesh leg to that MeshService's
``kuma.io/service``, as ``<service>.mesh`` is (pure functions, then the generation loop on a real memory store)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from isthmus.gateway import mesh_names
from isthmus.gateway.reconciler import LISTEN_LABEL, WORKSPACE_LABEL, GatewayCache, GatewayReconciler
from isthmus.gateway.store import GatewayStore
from isthmus.store.base import Op, OpKind, Record
from isthmus.store.memory import MemoryStore

NOW = datetime.datetime.now(datetime.UTC)
REMOTE = "edge-gcp.svc.gcp.mesh.local"


def _ms(name: str, service: str | None, hostnames: list[str]) -> dict[str, Any]:
    selector = {"dataplaneTags": {"kuma.io/service": service}} if service else {"dataplaneRef": {"name": "x"}}
    return {
        "spec": {"selector": selector, "ports": [{"port": 8000, "appProtocol": "http"}]},
        "status": {"addresses": [{"hostname": h, "origin": "HostnameGenerator"} for h in hostnames]},
    }


def _record(name: str, body: dict[str, Any]) -> Record:
    return Record("MeshService", "default", name, body, {}, 1, NOW, NOW)


def test_hostnames_map_to_the_selected_service() -> None:
    records = [
        _record("edge-gcp-x", _ms("edge-gcp", "edge-gcp", [REMOTE, "Other.Name."])),
        _record("by-ref", _ms("by-ref", None, ["by-ref.svc.mesh.local"])),  # no kuma.io/service: not a leg
        _record("a", _ms("a", "a", ["clash.svc.mesh.local"])),
        _record("b", _ms("b", "b", ["clash.svc.mesh.local"])),  # claimed by two services: neither
    ]
    assert mesh_names.hostname_services(records) == {REMOTE: "edge-gcp", "other.name": "edge-gcp"}


def test_resolve_rewrites_only_the_services_naming_a_hostname() -> None:
    remote: dict[str, Any] = {
        "id": "1",
        "name": "shop",
        "host": REMOTE.upper(),
        "port": 80,
        "path": "/catalog",
    }
    plain: dict[str, Any] = {"id": "2", "name": "plain", "host": "example.com", "port": 80}
    entities: dict[str, dict[str, dict[str, Any]]] = {
        "services": {"1": remote, "2": plain},
        "routes": {"r": {"id": "r"}},
    }
    names = mesh_names.used(entities, {REMOTE: "edge-gcp", "unused.mesh.local": "x"})
    assert names == {REMOTE: "edge-gcp"}
    view = mesh_names.resolve(entities, names)
    assert view["services"]["1"] == {**remote, "host": "edge-gcp.mesh"}
    assert view["services"]["2"] is plain and view["routes"] == entities["routes"]
    assert entities["services"]["1"]["host"] == REMOTE.upper()  # the workspace's entities are untouched
    assert mesh_names.digest(names) != mesh_names.digest({}) == ""


async def test_a_generated_hostname_becomes_a_mesh_leg_when_its_meshservice_is_named() -> None:
    store = MemoryStore()
    await store.start()
    gateways = GatewayStore(store)
    reconciler = GatewayReconciler(store, gateways, GatewayCache())
    task = asyncio.create_task(reconciler.run())
    try:
        await gateways.create("default", "services", {"name": "shop", "url": f"http://{REMOTE}/catalog"})
        await gateways.create("default", "routes", {"name": "r", "paths": ["/shop"], "service": "shop"})
        gateway = {
            "networking": {"address": "10.0.0.2", "gateway": {"tags": {"kuma.io/service": "edge-azure"}}}
        }
        labels = {WORKSPACE_LABEL: "default", LISTEN_LABEL: "0.0.0.0:8000"}
        await store.write(
            [Op(OpKind.UPSERT, "Dataplane", "default", "edge-azure-1", spec=gateway, labels=labels)]
        )
        async with asyncio.timeout(10):
            while "default.edge-azure-1" not in reconciler.proxies:
                await asyncio.sleep(0.01)
        assert reconciler.mesh_services("default", "edge-azure-1") == frozenset()  # not named yet
        # the MeshService arrives (synced from gcp) and the names controller gives it its hostname
        body = _ms("edge-gcp", "edge-gcp", [REMOTE])
        await store.write([Op(OpKind.UPSERT, "MeshService", "default", "edge-gcp-x", spec=body)])
        async with asyncio.timeout(10):
            while reconciler.mesh_services("default", "edge-azure-1") != frozenset({"edge-gcp"}):
                await asyncio.sleep(0.01)
        # the hostname goes away: so does the leg
        await store.write([Op(OpKind.DELETE, "MeshService", "default", "edge-gcp-x")])
        async with asyncio.timeout(10):
            while reconciler.mesh_services("default", "edge-azure-1"):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await store.close()
