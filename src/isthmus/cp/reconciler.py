"""The generation loop: store change events -> mesh context -> per-proxy IR -> xDS snapshot -> cache.

One task runs :meth:`Reconciler.run`. It coalesces bursts of events, rebuilds the context of each mesh that
changed, and regenerates only the proxies whose inputs (mesh hash, certificate) changed. A proxy whose new
configuration fails to translate or is inconsistent keeps its previous snapshot; the error is recorded for
inspection and does not affect other proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.cp.certificates import IssuedIdentity, WorkloadCertificates, ensure_mesh_ca
from isthmus.ir.build import Identity, build_proxy_ir, node_id
from isthmus.ir.model import ProxyIR
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import Registry, Resource, from_record
from isthmus.store.base import ChangeEvent, ResourceStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed

log = logging.getLogger(__name__)
DEBOUNCE_SECONDS = 0.02


@dataclass
class ProxyState:
    mesh: str
    name: str
    inputs_key: tuple[str, int]
    ir: ProxyIR | None
    snapshot: Snapshot | None
    error: str = ""
    generated_at: datetime | None = None


class Reconciler:
    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        cache: SnapshotCache,
        certificates: WorkloadCertificates,
    ) -> None:
        self.store = store
        self.registry = registry
        self.cache = cache
        self.certificates = certificates
        self.contexts: dict[str, MeshContext] = {}
        self.proxies: dict[str, ProxyState] = {}
        self._ready = asyncio.Event()
        self.generations = 0
        self._parsed: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, str], Resource]] = {}

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # -- main loop -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        async with self.store.subscribe() as events, asyncio.TaskGroup() as tg:
            # the event iterator is drained by its own task: timeouts below must never cancel it
            tg.create_task(self._drain(events, queue))
            await self.sync_all()
            self._ready.set()
            while True:
                dirty = await self._next_batch(queue)
                if dirty is None:
                    return
                for mesh in sorted(dirty):
                    await self.sync_mesh(mesh)

    @staticmethod
    async def _drain(events: AsyncIterator[ChangeEvent], queue: asyncio.Queue[ChangeEvent | None]) -> None:
        async for ev in events:
            queue.put_nowait(ev)
        queue.put_nowait(None)

    async def _next_batch(self, queue: asyncio.Queue[ChangeEvent | None]) -> set[str] | None:
        """Meshes touched by the next burst of events, or every mesh when a certificate is due."""
        timeout = None
        due = self.certificates.next_rotation()
        if due is not None:
            timeout = max(0.0, (due - datetime.now(UTC)).total_seconds())
        try:
            first = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return set(self.contexts)
        if first is None:
            return None
        dirty = {self._mesh_of(first)}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEBOUNCE_SECONDS):
                while True:
                    ev = await queue.get()
                    if ev is None:
                        return None
                    dirty.add(self._mesh_of(ev))
        return dirty

    @staticmethod
    def _mesh_of(ev: ChangeEvent) -> str:
        return ev.name if ev.type == "Mesh" else ev.mesh

    # -- generation ------------------------------------------------------------------------------------------
    async def sync_all(self) -> None:
        page = await self.store.list("Mesh")
        names = {r.name for r in page.items} | set(self.contexts)
        for name in sorted(names):
            await self.sync_mesh(name)

    async def _load(self, kind: str, mesh: str) -> list[Resource]:
        """The resources of a kind in a mesh; a record whose content did not change is not parsed again."""
        page = await self.store.list(kind, mesh)
        out = []
        for record in page.items:
            key = (record.type, record.mesh, record.name)
            cached = self._parsed.get(key)
            if cached is None or cached[0] != record.spec or cached[1] != record.labels:
                cached = (record.spec, record.labels, from_record(record, self.registry))
                self._parsed[key] = cached
            out.append(cached[2])
        if len(out) != sum(1 for k in self._parsed if k[0] == kind and k[1] == mesh):  # some were deleted
            live = {(r.type, r.mesh, r.name) for r in page.items}
            self._parsed = {
                k: v for k, v in self._parsed.items() if k[0] != kind or k[1] != mesh or k in live
            }
        return out

    async def sync_mesh(self, mesh: str) -> None:
        record = await self.store.get("Mesh", "", mesh)
        if record is None:
            self.contexts.pop(mesh, None)
            self._parsed = {k: v for k, v in self._parsed.items() if k[1] != mesh}
            for nid in [n for n, p in self.proxies.items() if p.mesh == mesh]:
                self._drop(nid)
            return
        mesh_res = from_record(record, self.registry)
        dataplanes = await self._load("Dataplane", mesh)
        policies: list[Resource] = []
        for ptype in self.registry.policies():
            policies.extend(await self._load(ptype.kind, mesh))
        ca = None
        backend = mesh_res.spec.enabled_backend  # type: ignore[attr-defined]
        if backend is not None:
            ca = await ensure_mesh_ca(self.store, mesh, backend.name)
        ctx = build_mesh_context(mesh_res, dataplanes, policies, ca.cert_pem.decode() if ca else "")
        self.contexts[mesh] = ctx
        live = set()
        for i, dp in enumerate(ctx.dataplanes.values()):
            nid = node_id(mesh, dp.name)
            live.add(nid)
            issued = None
            if ca is not None and backend is not None:
                issued = self.certificates.identity(
                    nid,
                    ca=ca,
                    mesh=mesh,
                    services=tuple(dp.spec.services),  # type: ignore[attr-defined]
                    tags=_tag_values(dp),
                    lifetime=backend.cert_lifetime,
                )
            self._generate(ctx, dp, nid, issued)
            if i % 50 == 49:
                await asyncio.sleep(0)  # let the ADS streams breathe during large regenerations
        for nid in [n for n, p in self.proxies.items() if p.mesh == mesh and n not in live]:
            self._drop(nid)

    def _drop(self, nid: str) -> None:
        self.proxies.pop(nid, None)
        self.cache.clear(nid)
        self.certificates.forget(nid)

    def _generate(self, ctx: MeshContext, dp: Resource, nid: str, issued: IssuedIdentity | None) -> None:
        key = (ctx.hash, issued.certificate.serial if issued else 0)
        state = self.proxies.get(nid)
        if state is not None and state.inputs_key == key:
            return
        identity = None
        if issued is not None:
            identity = Identity(issued.certificate.cert_pem.decode(), issued.certificate.key_pem.decode())
        try:
            ir = build_proxy_ir(ctx, dp.name, identity)
            snapshot = Snapshot.of_resources(translate_packed(ir))
            # Generated resources are consistent by construction (every golden case and protocol test checks
            # it); user-supplied MeshProxyPatch modifications can reference anything, so those are checked here.
            problems = snapshot.consistency_errors() if ir.patches else []
            if problems:
                raise ValueError("inconsistent snapshot: " + "; ".join(problems))
        except Exception as exc:  # a bad input must not break the other proxies
            log.exception("generating config for %s failed", nid)
            previous = state.snapshot if state else None
            self.proxies[nid] = ProxyState(
                ctx.name, dp.name, key, state.ir if state else None, previous, str(exc)
            )
            return
        self.proxies[nid] = ProxyState(ctx.name, dp.name, key, ir, snapshot, "", datetime.now(UTC))
        self.cache.set_snapshot(nid, snapshot)
        self.generations += 1


def _tag_values(dp: Resource) -> dict[str, tuple[str, ...]]:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    values: dict[str, set[str]] = {}
    for inbound in spec.networking.inbound:
        for k, v in inbound.tags.items():
            if k != "kuma.io/service":
                values.setdefault(k, set()).add(v)
    return {k: tuple(sorted(v)) for k, v in values.items()}
