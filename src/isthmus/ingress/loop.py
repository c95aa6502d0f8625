"""What the control plane's loops for zone ingresses and zone egresses share: they wake on their kinds' changes
(and when the mesh generation loop has rebuilt a mesh's context), debounce, and run ``sync`` without ever letting
the loop die; a proxy labelled with another zone is never served here, and a global control plane serves none."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from isthmus.cp.reconciler import Reconciler
from isthmus.resources.registry import Registry
from isthmus.store.base import Record, ResourceStore
from isthmus.xds.cache import SnapshotCache

log = logging.getLogger(__name__)
DEBOUNCE_SECONDS = 0.05


class ZoneProxyLoop:
    kinds: tuple[str, ...] = ()  # the resource types whose changes wake the loop
    label = "zone proxies"  # for log lines

    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        cache: SnapshotCache,
        meshes: Reconciler,
        *,
        mode: str = "standalone",
        zone: str = "",
    ) -> None:
        self.store = store
        self.registry = registry
        self.cache = cache
        self.meshes = meshes
        self.mode = mode
        self.zone = zone
        self._wake = asyncio.Event()

    def request_sync(self, *_: object) -> None:
        self._wake.set()

    def _own(self, record: Record) -> bool:
        if self.mode == "global":
            return False
        owner = record.labels.get("kuma.io/zone", "")
        return not owner or not self.zone or owner == self.zone

    async def run(self) -> None:
        async with self.store.subscribe() as events, asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(events))
            await self.meshes.wait_ready()
            self._wake.set()
            while True:
                await self._wake.wait()
                await asyncio.sleep(DEBOUNCE_SECONDS)
                self._wake.clear()
                try:
                    await self.sync()
                except Exception:  # never let the loop die (CancelledError is not an Exception)
                    log.exception("%s: generation failed; retrying on the next change", self.label)

    async def _watch(self, events: Any) -> None:
        async for ev in events:
            if ev.type in self.kinds:
                self._wake.set()

    async def sync(self) -> None:
        raise NotImplementedError
