"""isthmus_store_operation_seconds: the control plane's store, timed per operation and resource type."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from isthmus.cp.store_metrics import TimedStore
from isthmus.store.base import Op, OpKind
from isthmus.store.memory import MemoryStore


def test_every_operation_is_observed() -> None:
    async def scenario() -> str:
        registry = CollectorRegistry()
        store = TimedStore(MemoryStore(), registry)
        await store.start()
        try:
            await store.write([Op(OpKind.UPSERT, "Mesh", "", "default", {"type": "Mesh", "name": "default"})])
            assert (await store.get("Mesh", "", "default")) is not None
            assert (await store.list("Mesh")).total == 1
            await store.write([])
        finally:
            await store.close()
        return generate_latest(registry).decode()

    text = asyncio.run(scenario())
    for op, rtype in (("get", "Mesh"), ("list", "Mesh"), ("write", "Mesh"), ("write", "none")):
        assert f'isthmus_store_operation_seconds_count{{op="{op}",type="{rtype}"}} 1.0' in text
