"""The 1 s read cache that ADS stream authentication reads the store through."""

from __future__ import annotations

from typing import Any

from isthmus.cp.read_cache import CachedReads
from isthmus.store.base import Op, OpKind, Record
from isthmus.store.memory import MemoryStore


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, type: str, mesh: str, name: str) -> Record | None:
        self.gets += 1
        return await super().get(type, mesh, name)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_reads_are_kept_for_the_ttl_and_absent_dataplanes_are_read_again() -> None:
    store = CountingStore()
    await store.start()
    await store.write([Op(OpKind.CREATE, "Secret", "m", "key", spec={"data": {"key": "k"}})])
    clock = Clock()
    reads = CachedReads(store, ttl=1.0, clock=clock)

    first: Any = await reads.get("Secret", "m", "key")
    assert first is not None and first.spec == {"data": {"key": "k"}}
    assert await reads.get("Secret", "m", "key") is first
    assert await reads.get("Secret", "m", "revocations") is None
    assert await reads.get("Secret", "m", "revocations") is None
    assert store.gets == 2  # one read each

    assert await reads.get("Dataplane", "m", "web-1") is None
    await store.write([Op(OpKind.CREATE, "Dataplane", "m", "web-1", spec={"x": 1})])
    assert await reads.get("Dataplane", "m", "web-1") is not None  # registered just now: found at once

    clock.now += 1.5  # expired: read again
    gets = store.gets
    await reads.get("Secret", "m", "key")
    assert store.gets == gets + 1

    await reads.write([Op(OpKind.UPDATE, "Secret", "m", "key", spec={"data": {"key": "k2"}})])
    again: Any = await reads.get("Secret", "m", "key")
    assert again.spec == {"data": {"key": "k2"}}  # a write through the cache is seen at once
    await store.close()
