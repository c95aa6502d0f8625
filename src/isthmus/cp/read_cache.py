"""A short-lived read cache in front of the store, for the hot path of ADS stream authentication.

When a control plane restarts, every data plane reconnects at once, and each stream's token check reads the
signing key, the revocation list and the Dataplane: thousands of reads of a handful of records through the one
SQLite connection. :class:`CachedReads` keeps what ``get`` returned for ``ttl`` seconds (1 s by default, as
Kuma's cached resource manager), so a revocation or a new signing key takes effect on new streams within that
time. An absent Dataplane is not cached: one that has just registered is found at once. Everything else goes
straight to the store.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

from isthmus.store.base import ChangeEvent, Op, Page, Record, ResourceStore

__all__ = ["CachedReads"]

MAX_ENTRIES = 20_000


class CachedReads:
    def __init__(
        self, store: ResourceStore, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[tuple[str, str, str], tuple[float, Record | None]] = {}

    async def get(self, type: str, mesh: str, name: str) -> Record | None:
        key = (type, mesh, name)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now and (hit[1] is not None or type != "Dataplane"):
            return hit[1]
        record = await self.store.get(type, mesh, name)
        if len(self._cache) >= MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
        self._cache[key] = (now + self.ttl, record)
        return record

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def list(
        self, type: str, mesh: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> Page:
        return await self.store.list(type, mesh, offset=offset, limit=limit)

    async def write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        for op in ops:
            self._cache.pop((op.type, op.mesh, op.name), None)
        return await self.store.write(ops)

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ChangeEvent]]:
        return self.store.subscribe()
