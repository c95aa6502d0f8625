"""The control plane's names loop: generated MeshServices, VIPs and hostnames written to the store.

:class:`NamesController` runs beside the generation loop. Any change to a Mesh, Dataplane, MeshService,
MeshExternalService, MeshMultiZoneService or HostnameGenerator (and a timer, for deletion grace periods) starts
a pass over every mesh: generate MeshServices when ``Mesh.meshServices.mode`` asks for it
(:mod:`~isthmus.names.generate`), then give every service resource its VIP (:mod:`~isthmus.names.vips`) and
hostnames (:mod:`~isthmus.names.hostnames`) in its status, and every local MeshService its
``dataplaneProxies`` and ``tls`` (:mod:`~isthmus.names.proxy_status`). Writes name the version they read, so a
user's write in between wins and the next pass redoes the work; a status that did not change is not written.
The status is in the store: VIPs survive restarts.

The events of the controller's own writes start no pass (the pass that wrote them already saw the result). A
data plane connecting, disconnecting or receiving its certificate is no store event: :meth:`proxy_changed`
(called by the control plane's ADS insights) marks it, and a light pass rewrites only the MeshServices that
select it, from the selection the last full pass indexed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from isthmus.names import generate, hostnames, proxy_status, vips
from isthmus.names.selection import DISPLAY_NAME, MANAGED_BY, NAMESPACE, ZONE, effective_labels, is_local
from isthmus.resources.hostnames import GLOBAL_DEFAULTS, ZONE_DEFAULTS, HostnameGeneratorSpec
from isthmus.resources.mesh import MeshServicesMode, MeshSpec
from isthmus.resources.meshservice import NAME_KINDS, MeshMultiZoneServiceDocument, MeshServiceDocument
from isthmus.resources.registry import Registry, Resource, from_record
from isthmus.store.base import ChangeEvent, Conflict, NotFound, Op, OpKind, Record, ResourceStore, StoreError
from isthmus.xds.node import InvalidNodeId, parse_node_id

log = logging.getLogger(__name__)
WATCHED = frozenset({"Mesh", "Dataplane", "HostnameGenerator", *NAME_KINDS})
DEBOUNCE_SECONDS = 0.05
TICK_SECONDS = 60.0
MsKey = tuple[str, str]  # (mesh, name)


@dataclass(frozen=True)
class _Selected:
    """What the last full pass found for a local MeshService: its selected Dataplanes, the mesh's mTLS, and
    the version of the record it wrote (or read unchanged)."""

    members: tuple[proxy_status.Member, ...]
    mtls: bool
    version: int


class _NoProxies:
    """Facts without a running ADS server (tests of the names alone, a global control plane): nothing is
    connected, nothing holds a certificate."""

    def connected(self, mesh: str, name: str) -> bool:
        return False

    def certified(self, mesh: str, name: str) -> bool:
        return False


class NamesController:
    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        *,
        mode: str = "standalone",
        zone: str = "default",
        grace: timedelta = generate.DEFAULT_GRACE,
        proxies: proxy_status.ProxyFacts | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.mode = mode
        self.zone = zone
        self.grace = grace
        self.proxies: proxy_status.ProxyFacts = proxies or _NoProxies()
        self.passes = 0
        self.light_passes = 0
        self._remembered: dict[str, dict[vips.Key, str]] = {kind: {} for kind in vips.RANGES}
        self._wake = asyncio.Event()
        self._pending: list[ChangeEvent] = []  # store events since the last pass
        self._written: dict[tuple[str, str, str], int] = {}  # (type, mesh, name) -> version this loop wrote
        self._dirty: set[MsKey] = set()  # Dataplanes whose connection or certificate changed
        self._selected: dict[MsKey, _Selected] = {}  # local MeshServices, as the last full pass saw them
        self._selecting: dict[MsKey, set[MsKey]] = {}  # Dataplane -> the MeshServices that select it
        self._parsed: dict[
            MsKey, tuple[tuple[int, datetime], Resource | None]
        ] = {}  # Dataplanes parsed, by version

    def proxy_changed(self, node_id: str) -> None:
        """A data plane connected, disconnected or got a certificate (cheap, synchronous: an ADS callback)."""
        try:
            self._dirty.add(parse_node_id(node_id))
        except InvalidNodeId:
            return
        self._wake.set()

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

            async def listen() -> None:
                async for ev in events:
                    if ev.type in WATCHED:
                        self._pending.append(ev)
                        self._wake.set()

            listener = asyncio.create_task(listen())
            try:
                full = True
                while True:
                    if full:
                        await self._pass_safely()
                    else:
                        await self._light_pass_safely()
                    try:  # asyncio.timeout: wait_for (3.11) may swallow a cancellation when the event is set
                        async with asyncio.timeout(TICK_SECONDS):
                            await self._wake.wait()
                        full = False
                    except TimeoutError:
                        full = True
                    await asyncio.sleep(DEBOUNCE_SECONDS)
                    self._wake.clear()
                    full = self._foreign_changes() or full
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    def _foreign_changes(self) -> bool:
        """Whether a store event since the last look is not the echo of this loop's own write."""
        pending, self._pending = self._pending, []
        written, self._written = self._written, {}
        return any(written.get((ev.type, ev.mesh, ev.name)) != ev.version for ev in pending)

    async def _pass_safely(self) -> None:
        try:
            await self.sync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the names pass failed; retried on the next change")

    async def _light_pass_safely(self) -> None:
        try:
            await self.sync_proxies()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the MeshService proxies pass failed; retried on the next change")

    # -- one pass ------------------------------------------------------------------------------------------------
    async def sync(self) -> None:
        """One full pass: generate, then every status (VIPs, hostnames, the MeshServices' proxies)."""
        now = datetime.now(UTC)
        self._dirty.clear()  # this pass reads every data plane's facts afresh
        mtls: dict[str, bool] = {}
        indexes: dict[str, proxy_status.DataplaneIndex] = {}
        parsed: dict[MsKey, tuple[tuple[int, datetime], Resource | None]] = {}
        meshes = [r for r in (await self.store.list("Mesh")).items]
        for mesh in meshes:
            try:
                spec = from_record(mesh, self.registry).spec
            except Exception:
                continue
            assert isinstance(spec, MeshSpec)
            if self.mode != "global":  # a global's MeshServices are the zones' (synced up), as in Kuma
                dataplanes = await self._dataplanes(mesh.name, parsed)
                mtls[mesh.name] = spec.enabled_backend is not None
                indexes[mesh.name] = proxy_status.DataplaneIndex(dataplanes)
                await self._generate(mesh.name, spec.mesh_services_mode, dataplanes, now)
        self._parsed = parsed
        await self._statuses(mtls, indexes)
        self.passes += 1

    async def _dataplanes(
        self, mesh: str, parsed: dict[MsKey, tuple[tuple[int, datetime], Resource | None]]
    ) -> list[Resource]:
        """The mesh's valid Dataplanes (each record parsed once per version)."""
        out: list[Resource] = []
        for record in (await self.store.list("Dataplane", mesh)).items:
            key = (mesh, record.name)
            cached = self._parsed.get(key)
            stamp = (record.version, record.creation_time)  # a Dataplane made again starts at version 1
            if cached is None or cached[0] != stamp:
                try:
                    cached = (stamp, from_record(record, self.registry))
                except Exception:
                    cached = (stamp, None)
            parsed[key] = cached
            if cached[1] is not None:
                out.append(cached[1])
        return out

    async def _generate(
        self, mesh: str, mode: MeshServicesMode, dataplanes: Sequence[Resource], now: datetime
    ) -> None:
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

    async def _write(self, ops: Sequence[Op]) -> dict[tuple[str, str, str], int]:
        """Write each op on its own (a conflict on one record must not hold back the others); the versions
        written, by (type, mesh, name)."""
        written: dict[tuple[str, str, str], int] = {}
        for op in ops:
            try:
                records = await self.store.write([op])
            except (Conflict, NotFound, StoreError) as exc:
                log.debug("names: %s %s/%s not written (%s); next pass", op.type, op.mesh, op.name, exc)
                continue
            if records and records[0] is not None:
                written[(op.type, op.mesh, op.name)] = records[0].version
        self._written.update(written)
        return written

    async def _statuses(self, mtls: dict[str, bool], indexes: dict[str, proxy_status.DataplaneIndex]) -> None:
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
        selected: dict[MsKey, _Selected] = {}
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
                if kind == "MeshService":
                    members = self._members(r, indexes)
                    if members is not None:
                        fields = proxy_status.proxy_fields(
                            r.mesh, members, self.proxies, mtls=mtls[r.mesh], status=status
                        )
                        status.update(fields)
                        selected[key] = _Selected(members, mtls[r.mesh], r.version)
                if status != (r.spec.get("status") or {}):
                    body = {**r.spec, "status": status}
                    ops.append(Op(OpKind.UPDATE, kind, r.mesh, r.name, body, r.labels, r.version))
        written = await self._write(ops)
        self._index(selected, written)

    def _members(
        self, ms: Record, indexes: dict[str, proxy_status.DataplaneIndex]
    ) -> tuple[proxy_status.Member, ...] | None:
        """The Dataplanes a MeshService of this zone selects (None: not this control plane's to count: a
        global's, another zone's copy, a mesh not valid, a MeshService not valid)."""
        index = indexes.get(ms.mesh)
        if index is None or not is_local(ms.labels):
            return None
        try:
            doc = from_record(ms, self.registry).spec
        except Exception:
            return None
        assert isinstance(doc, MeshServiceDocument)
        return proxy_status.members(doc, index)

    def _index(self, selected: dict[MsKey, _Selected], written: dict[tuple[str, str, str], int]) -> None:
        """Remember the selections of a full pass, and which MeshServices select each Dataplane."""
        selecting: dict[MsKey, set[MsKey]] = {}
        for key, sel in selected.items():
            version = written.get(("MeshService", *key))
            if version is not None:
                selected[key] = replace(sel, version=version)
            for m in sel.members:
                selecting.setdefault((key[0], m.name), set()).add(key)
        self._selected = selected
        self._selecting = selecting

    async def sync_proxies(self) -> None:
        """The light pass: the MeshServices selecting a data plane whose connection or certificate changed
        get their ``dataplaneProxies`` and ``tls`` again (a MeshService changed since the last full pass is left
        to the full pass its store event starts)."""
        dirty, self._dirty = self._dirty, set()
        keys = sorted({k for dp in dirty for k in self._selecting.get(dp, ())})
        ops: list[Op] = []
        for mesh, name in keys:
            sel = self._selected.get((mesh, name))
            record = await self.store.get("MeshService", mesh, name)
            if sel is None or record is None or record.version != sel.version:
                continue
            old = record.spec.get("status") or {}
            status = dict(old)
            status.update(
                proxy_status.proxy_fields(mesh, sel.members, self.proxies, mtls=sel.mtls, status=old)
            )
            if status != old:
                body = {**record.spec, "status": status}
                ops.append(Op(OpKind.UPDATE, "MeshService", mesh, name, body, record.labels, record.version))
        for (_, mesh, name), version in (await self._write(ops)).items():
            self._selected[(mesh, name)] = replace(self._selected[(mesh, name)], version=version)
        self.light_passes += 1

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
