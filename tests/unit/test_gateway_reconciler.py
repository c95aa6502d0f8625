"""The gateway's generation loop on a real (in-memory) store: labels -> proxies, Kong changes -> snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from isthmus.gateway.reconciler import (
    LISTEN_LABEL,
    LISTEN_TLS_LABEL,
    WORKSPACE_LABEL,
    GatewayCache,
    GatewayReconciler,
    gateway_of,
)
from isthmus.gateway.store import GatewayStore
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.store.base import Op, OpKind, Record
from isthmus.store.memory import MemoryStore
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot

NODE = "default.edge-1"
GATEWAY_SPEC: dict[str, Any] = {
    "networking": {"address": "127.0.0.1", "gateway": {"tags": {"kuma.io/service": "edge"}}}
}
LABELS = {WORKSPACE_LABEL: "default", LISTEN_LABEL: "127.0.0.1:8000_127.0.0.1:8001"}


def _record(spec: dict[str, Any], labels: dict[str, str]) -> Record:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    return Record("Dataplane", "default", "edge-1", spec, labels, 1, now, now)


def test_gateway_of_reads_the_labels() -> None:
    proxy = gateway_of(_record(GATEWAY_SPEC, {**LABELS, LISTEN_TLS_LABEL: "127.0.0.1:8443"}))
    assert proxy is not None
    assert proxy.workspace == "default"
    assert proxy.listen == (ListenAddress("127.0.0.1", 8000), ListenAddress("127.0.0.1", 8001))
    assert proxy.listen_tls == (ListenAddress("127.0.0.1", 8443),)
    assert gateway_of(_record({"networking": {"address": "127.0.0.1"}}, LABELS)) is None  # not a gateway
    assert gateway_of(_record(GATEWAY_SPEC, {WORKSPACE_LABEL: "default"})) is None  # nothing to listen on
    assert gateway_of(_record(GATEWAY_SPEC, {**LABELS, LISTEN_LABEL: "nonsense"})) is None


def test_cache_lays_the_overlay_over_the_mesh_snapshot() -> None:
    cache = GatewayCache()
    base = Snapshot.build({})
    overlay = translate("default", {}, [ListenAddress("127.0.0.1", 8000)])
    assert not cache.set_overlay(NODE, overlay)  # no mesh part yet: nothing is served
    assert cache.get_snapshot(NODE) is None
    assert cache.set_snapshot(NODE, base)
    merged = cache.get_snapshot(NODE)
    assert merged is not None and merged.names(types.LISTENER) == {"kong:http:127.0.0.1:8000"}
    assert cache.set_overlay(NODE, None)
    assert cache.get_snapshot(NODE) == base
    cache.clear(NODE)
    assert cache.get_snapshot(NODE) is None


@pytest.fixture()
async def running() -> AsyncIterator[tuple[MemoryStore, GatewayStore, GatewayCache]]:
    store = MemoryStore()
    await store.start()
    gateways = GatewayStore(store)
    cache = GatewayCache()
    task = asyncio.create_task(GatewayReconciler(store, gateways, cache).run())
    try:
        yield store, gateways, cache
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()


async def _until(check: object, what: str) -> None:
    assert callable(check)
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)


async def test_kong_changes_reach_the_gateway_snapshot(
    running: tuple[MemoryStore, GatewayStore, GatewayCache],
) -> None:
    store, gateways, cache = running
    cache.set_snapshot(NODE, Snapshot.build({}))  # what the mesh reconciler would have built
    await gateways.create("default", "services", {"name": "s", "url": "http://127.0.0.1:9000"})
    await gateways.create("default", "routes", {"name": "r", "paths": ["/a"], "service": "s"})
    await store.write([Op(OpKind.UPSERT, "Dataplane", "default", "edge-1", spec=GATEWAY_SPEC, labels=LABELS)])

    def listeners() -> set[str]:
        snapshot = cache.get_snapshot(NODE)
        return set(snapshot.names(types.LISTENER)) if snapshot else set()

    await _until(lambda: listeners() == {"kong:http:127.0.0.1:8000", "kong:http:127.0.0.1:8001"}, "listeners")
    snapshot = cache.get_snapshot(NODE)
    assert snapshot is not None
    routes = snapshot.version(types.ROUTE)
    await gateways.update("default", "routes", "r", {"paths": ["/b"]})
    await _until(
        lambda: (s := cache.get_snapshot(NODE)) is not None and s.version(types.ROUTE) != routes, "route"
    )
    # the mesh part changes: the overlay stays on top
    cache.set_snapshot(NODE, Snapshot.build({}))
    assert listeners() == {"kong:http:127.0.0.1:8000", "kong:http:127.0.0.1:8001"}
    # the Dataplane gone, the overlay goes
    await store.write([Op(OpKind.DELETE, "Dataplane", "default", "edge-1")])
    await _until(lambda: listeners() == set(), "overlay removed")
