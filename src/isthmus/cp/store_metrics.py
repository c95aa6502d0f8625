"""The store's latency on the control plane's ``/metrics``: a :class:`ResourceStore` that times each operation.

``isthmus_store_operation_seconds{op, type}``: a histogram per operation (``get``, ``list``, ``write``) and
resource type (a write's first op's type; ``mixed`` for a batch of several types), errors included.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from prometheus_client import CollectorRegistry, Histogram

from isthmus.store.base import ChangeEvent, Op, Page, Record, ResourceStore

__all__ = ["TimedStore"]

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TimedStore:
    """Delegates to ``store``, observing every ``get``, ``list`` and ``write`` in the histogram."""

    def __init__(self, store: ResourceStore, registry: CollectorRegistry) -> None:
        self.store = store
        self.seconds = Histogram(
            "isthmus_store_operation_seconds",
            "Time of the resource store's operations (get, list, write) by resource type",
            ["op", "type"],
            buckets=_BUCKETS,
            registry=registry,
        )

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def get(self, type: str, mesh: str, name: str) -> Record | None:
        t0 = time.perf_counter()
        try:
            return await self.store.get(type, mesh, name)
        finally:
            self.seconds.labels("get", type).observe(time.perf_counter() - t0)

    async def list(
        self, type: str, mesh: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> Page:
        t0 = time.perf_counter()
        try:
            return await self.store.list(type, mesh, offset=offset, limit=limit)
        finally:
            self.seconds.labels("list", type).observe(time.perf_counter() - t0)

    async def write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        types = {op.type for op in ops}
        label = types.pop() if len(types) == 1 else ("mixed" if types else "none")
        t0 = time.perf_counter()
        try:
            return await self.store.write(ops)
        finally:
            self.seconds.labels("write", label).observe(time.perf_counter() - t0)

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ChangeEvent]]:
        return self.store.subscribe()
