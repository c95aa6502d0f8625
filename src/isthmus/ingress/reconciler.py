"""The control plane's loop for zone ingresses: after the mesh generation loop has rebuilt a mesh's context (or a
ZoneIngress changed), it

* writes the ``availableServices`` of this zone's own ingresses (:mod:`isthmus.ingress.available`), which other
  zones weigh their endpoints by;
* builds each own ingress's configuration (:mod:`isthmus.ingress.build`) into the snapshot cache under its node
  id (:mod:`isthmus.ingress.node`).

A ZoneIngress copied from another zone (labelled with that zone) is only read, never served; a global control
plane serves none.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from isthmus.cp.reconciler import Reconciler
from isthmus.ingress.available import available_services
from isthmus.ingress.build import IngressIR, build_ingress_ir
from isthmus.ingress.node import ingress_node_id
from isthmus.ingress.translate import translate_ingress
from isthmus.resources.registry import Registry, from_record
from isthmus.store.base import Op, OpKind, Record, ResourceStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.snapshot import Resource as XdsResource
from isthmus.xds.snapshot import Snapshot

log = logging.getLogger(__name__)
DEBOUNCE_SECONDS = 0.05


class IngressReconciler:
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
        self.proxies: dict[str, IngressIR] = {}  # node id -> what it serves (inspect)
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
                    log.exception("zone ingresses: generation failed; retrying on the next change")

    async def _watch(self, events: Any) -> None:
        async for ev in events:
            if ev.type == "ZoneIngress":
                self._wake.set()

    async def sync(self) -> None:
        contexts = dict(self.meshes.contexts)
        seen: set[str] = set()
        for record in (await self.store.list("ZoneIngress")).items:
            if not self._own(record):
                continue
            try:
                res = from_record(record, self.registry)
            except Exception as exc:
                log.error("stored ZoneIngress %r skipped: %s", record.name, exc)
                continue
            zone = str(record.spec.get("zone") or self.zone)
            available = available_services(contexts, zone)
            if (record.spec.get("availableServices") or []) != available:
                spec = {**record.spec, "availableServices": available}
                if self.zone and not record.spec.get("zone"):
                    spec["zone"] = self.zone
                try:
                    await self.store.write(
                        [
                            Op(
                                OpKind.UPSERT,
                                "ZoneIngress",
                                "",
                                record.name,
                                spec=spec,
                                labels=dict(record.labels),
                                expected_version=record.version,
                            )
                        ]
                    )
                except Exception as exc:  # a concurrent write: its event brings this loop back
                    log.warning("ZoneIngress %r: availableServices not written: %s", record.name, exc)
            ir = build_ingress_ir(res, contexts, self.zone)
            seen.add(ir.node_id)
            if self.proxies.get(ir.node_id) == ir:
                continue
            packed = {t: [XdsResource.of(t, m) for m in msgs] for t, msgs in translate_ingress(ir).items()}
            self.cache.set_snapshot(ir.node_id, Snapshot.of_resources(packed))
            self.proxies[ir.node_id] = ir
        for nid in [n for n in self.proxies if n not in seen]:
            del self.proxies[nid]
            self.cache.clear(nid)


__all__ = ["IngressReconciler", "ingress_node_id"]
