"""The control plane's names loop: generated MeshServices, VIPs and hostnames written to the store.

:class:`NamesController` runs beside the generation loop. Any change to a Mesh, Dataplane, MeshService,
MeshExternalService, MeshMultiZoneService or HostnameGenerator (and a timer, for deletion grace periods) starts
a pass over every mesh: generate MeshServices when ``Mesh.meshServices.mode`` asks for it
(:mod:`~isthmus.names.generate`), then give every service resource its VIP (:mod:`~isthmus.names.vips`) and
hostnames (:mod:`~isthmus.names.hostnames`) in its status. Writes name the version they read, so a user's write
in between wins and the next pass redoes the work. The status is in the store: VIPs survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from isthmus.names import generate, hostnames, vips
from isthmus.names.selection import DISPLAY_NAME, MANAGED_BY, NAMESPACE, ZONE, effective_labels
from isthmus.resources.hostnames import GLOBAL_DEFAULTS, ZONE_DEFAULTS, HostnameGeneratorSpec
from isthmus.resources.mesh import MeshServicesMode, MeshSpec
from isthmus.resources.meshservice import NAME_KINDS, MeshMultiZoneServiceDocument
from isthmus.resources.registry import Registry, Resource, from_record
from isthmus.store.base import Conflict, NotFound, Op, OpKind, Record, ResourceStore, StoreError

log = logging.getLogger(__name__)
WATCHED = frozenset({"Mesh", "Dataplane", "HostnameGenerator", *NAME_KINDS})
DEBOUNCE_SECONDS = 0.05
TICK_SECONDS = 60.0


class NamesController:
    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        *,
        mode: str = "standalone",
        zone: str = "default",
        grace: timedelta = generate.DEFAULT_GRACE,
    ) -> None:
        self.store = store
        self.registry = registry
        self.mode = mode
        self.zone = zone
        self.grace = grace
        self.passes = 0
        self._remembered: dict[str, dict[vips.Key, str]] = {kind: {} for kind in vips.RANGES}

    async def ensure_defaults(self) -> None:
        """Kuma's default HostnameGenerators for this mode (created once; a user may change or delete them)."""
        defaults = GLOBAL_DEFAULTS if self.mode == "global" else ZONE_DEFAULTS
        origin = "global" if self.mode == "global" else "zone"
        for default in defaults:
            doc = default.document(origin)
            if await self.store.get("HostnameGenerator", "", default.name) is not None:
                continue
            try:
                await self.store.write(
                    [Op(OpKind.CREATE, "HostnameGenerator", "", default.name, doc["spec"], doc["labels"])]
                )
            except StoreError:
                pass  # created meanwhile

    async def run(self) -> None:
        await self.ensure_defaults()
        async with self.store.subscribe() as events:
            wake = asyncio.Event()

            async def listen() -> None:
                async for ev in events:
                    if ev.type in WATCHED:
                        wake.set()

            listener = asyncio.create_task(listen())
            try:
                while True:
                    await self._pass_safely()
                    try:
                        await asyncio.wait_for(wake.wait(), TICK_SECONDS)
                    except TimeoutError:
                        pass
                    await asyncio.sleep(DEBOUNCE_SECONDS)
                    wake.clear()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _pass_safely(self) -> None:
        try:
            await self.sync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the names pass failed; retried on the next change")

    # -- one pass ------------------------------------------------------------------------------------------------
    async def sync(self) -> None:
        now = datetime.now(UTC)
        meshes = [r for r in (await self.store.list("Mesh")).items]
        for mesh in meshes:
            try:
                spec = from_record(mesh, self.registry).spec
            except Exception:
                continue
            assert isinstance(spec, MeshSpec)
            if self.mode != "global":  # a global's MeshServices are the zones' (synced up), as in Kuma
                await self._generate(mesh.name, spec.mesh_services_mode, now)
        await self._statuses()
        self.passes += 1

    async def _generate(self, mesh: str, mode: MeshServicesMode, now: datetime) -> None:
        dataplanes: list[Resource] = []
        for dp_record in (await self.store.list("Dataplane", mesh)).items:
            try:
                dataplanes.append(from_record(dp_record, self.registry))
            except Exception:
                continue
        stored = {r.name: r for r in (await self.store.list("MeshService", mesh)).items}
        managed = {n: r for n, r in stored.items() if r.labels.get(MANAGED_BY) == generate.GENERATOR}
        want: dict[str, generate.Desired] = {}
        if mode is not MeshServicesMode.DISABLED:
            existing = {n: dict(r.spec.get("spec") or {}) for n, r in managed.items()}
            want = generate.desired(mesh, dataplanes, existing, self.zone)
        ops: list[Op] = []
        for name, d in want.items():
            record = stored.get(name)
            if record is None:
                ops.append(Op(OpKind.CREATE, "MeshService", mesh, name, {"spec": d.spec}, d.labels))
            elif name in managed and (record.spec.get("spec") != d.spec or record.labels != d.labels):
                body = {**record.spec, "spec": d.spec}
                ops.append(Op(OpKind.UPDATE, "MeshService", mesh, name, body, d.labels, record.version))
        for name, old in managed.items():
            if name in want:
                continue
            if generate.GRACE_LABEL not in old.labels:
                labels = {**old.labels, generate.GRACE_LABEL: generate.grace_stamp(now)}
                ops.append(Op(OpKind.UPDATE, "MeshService", mesh, name, old.spec, labels, old.version))
            elif generate.grace_expired(old.labels, now, self.grace):
                ops.append(Op(OpKind.DELETE, "MeshService", mesh, name, expected_version=old.version))
        await self._write(ops)

    async def _write(self, ops: Sequence[Op]) -> None:
        for op in ops:  # one by one: a conflict on one record must not hold back the others
            try:
                await self.store.write([op])
            except (Conflict, NotFound, StoreError) as exc:
                log.debug("names: %s %s/%s not written (%s); next pass", op.type, op.mesh, op.name, exc)

    async def _statuses(self) -> None:
        generators: list[hostnames.Generator] = []
        for record in (await self.store.list("HostnameGenerator")).items:
            try:
                spec = from_record(record, self.registry).spec
            except Exception:
                continue
            assert isinstance(spec, HostnameGeneratorSpec)
            generators.append(hostnames.Generator(record.name, record.labels, record.creation_time, spec))
        records = {kind: (await self.store.list(kind)).items for kind in NAME_KINDS}
        ops: list[Op] = []
        for kind, items in records.items():
            current = {(r.mesh, r.name): _status_vip(kind, r.spec.get("status") or {}) for r in items}
            allocated = vips.allocate(kind, current, self._remembered[kind])
            self._remembered[kind].update(allocated)
            named = [hostnames.Named(r.mesh, r.name, r.labels, r.creation_time) for r in items]
            names = hostnames.generate(kind, generators, named, self.zone)
            for r in items:
                key = (r.mesh, r.name)
                status = dict(r.spec.get("status") or {})
                addresses, gen_statuses = names.get(key, ([], []))
                _set_vip(kind, status, allocated[key])
                _put(status, "addresses", addresses)
                _put(status, "hostnameGenerators", gen_statuses)
                if kind == "MeshMultiZoneService":
                    _put(status, "meshServices", self._matched(r, records["MeshService"]))
                if status != (r.spec.get("status") or {}):
                    body = {**r.spec, "status": status}
                    ops.append(Op(OpKind.UPDATE, kind, r.mesh, r.name, body, r.labels, r.version))
        await self._write(ops)

    def _matched(self, mzs: Record, services: Sequence[Record]) -> list[dict[str, Any]]:
        try:
            doc = from_record(mzs, self.registry).spec
        except Exception:
            return []
        assert isinstance(doc, MeshMultiZoneServiceDocument)
        selector = doc.spec.selector.mesh_service
        out = []
        for ms in services:
            if ms.mesh != mzs.mesh:
                continue
            labels = effective_labels(ms.labels, ms.name, self.zone)
            if selector.matches(labels):
                out.append(
                    {
                        "name": labels.get(DISPLAY_NAME, ms.name),
                        "namespace": labels.get(NAMESPACE, ""),
                        "zone": labels.get(ZONE, ""),
                        "mesh": ms.mesh,
                    }
                )
        return out


def _status_vip(kind: str, status: dict[str, Any]) -> str | None:
    if kind == "MeshExternalService":
        vip = status.get("vip") or {}
        return vip.get("ip") if isinstance(vip, dict) else None
    listed = status.get("vips") or []
    first = listed[0] if listed and isinstance(listed[0], dict) else {}
    ip = first.get("ip")
    return ip if isinstance(ip, str) else None


def _set_vip(kind: str, status: dict[str, Any], ip: str) -> None:
    if kind == "MeshExternalService":
        status["vip"] = {"ip": ip}
    else:
        status["vips"] = [{"ip": ip}]


def _put(status: dict[str, Any], key: str, value: list[Any]) -> None:
    if value:
        status[key] = value
    else:
        status.pop(key, None)
