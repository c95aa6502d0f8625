"""Gateway proxies' configuration: a workspace's Kong entities on the proxy listeners of each gateway Dataplane.

A gateway proxy (``isthmus dp run --proxy-type gateway``) registers a Dataplane with ``networking.gateway`` and
two labels (:data:`isthmus.dp.agent.GATEWAY_WORKSPACE_LABEL`, :data:`isthmus.dp.agent.GATEWAY_LISTEN_LABEL`): the
workspace it serves and its ``--proxy-listen`` addresses. Labels are stored with the Dataplane, so a restarted
control plane knows them before the proxy reconnects.

The mesh reconciler (:mod:`isthmus.cp.reconciler`) still builds the proxy's mesh part (its identity, SDS
certificate, outbounds) as for any Dataplane; :class:`GatewayCache` is the snapshot cache both write to: it keeps
each node's mesh snapshot and lays the gateway's resources (``kong:`` names, see :mod:`isthmus.gateway.translate`)
over it. :class:`GatewayReconciler` watches the store: a change of a ``Kong*`` record of a workspace rebuilds every
gateway proxy of that workspace, a change of a gateway Dataplane rebuilds that proxy. Translation is memoised per
(workspace generation, listen addresses), so many gateway processes of one workspace cost one translation.

A Kong Service whose host is ``<service>.mesh`` reaches that mesh service with the gateway's identity, with no
``networking.outbound`` entry: :meth:`GatewayReconciler.mesh_services` tells the mesh reconciler which mesh services a
gateway's workspace names (``request_sync`` when that changes), the mesh pipeline builds their clusters and the
mesh policies of each leg, and :func:`isthmus.gateway.mesh_leg.fuse` lays the gateway's resources over them (Kong's
values win where the Kong entity sets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from isthmus.gateway import mesh_leg, mesh_names
from isthmus.gateway.store import SCOPE_PREFIX, GatewayStore
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.store.base import ChangeEvent, Record, ResourceStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.node import node_id_or_none
from isthmus.xds.snapshot import Resource, Snapshot

log = logging.getLogger(__name__)

WORKSPACE_LABEL = "isthmus.io/gateway-workspace"
LISTEN_LABEL = "isthmus.io/gateway-listen"
LISTEN_TLS_LABEL = "isthmus.io/gateway-listen-tls"
DEBOUNCE_SECONDS = 0.02
Overlay = dict[str, list[Resource]]
# workspace, generation, listens, digest of the generated hostnames its Services name (isthmus.gateway.mesh_names)
_MemoKey = tuple[str, int, tuple[ListenAddress, ...], tuple[ListenAddress, ...], str]


@dataclass(frozen=True)
class GatewayProxy:
    workspace: str
    listen: tuple[ListenAddress, ...]
    listen_tls: tuple[ListenAddress, ...] = ()


def gateway_of(record: Record) -> GatewayProxy | None:
    """The gateway a Dataplane record asks for, or None (not a gateway, or labels missing or not valid)."""
    networking = record.spec.get("networking")
    if not isinstance(networking, dict) or not isinstance(networking.get("gateway"), dict):
        return None
    workspace = record.labels.get(WORKSPACE_LABEL)
    if not workspace:
        return None
    lists = []
    for label in (LISTEN_LABEL, LISTEN_TLS_LABEL):
        addresses = []
        for item in filter(None, record.labels.get(label, "").split("_")):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                log.error("Dataplane %s/%s: label %s: %r is not HOST:PORT", record.mesh, record.name, label, item)  # fmt: skip
                return None
            addresses.append(ListenAddress(host, int(port)))
        lists.append(tuple(addresses))
    if not lists[0] and not lists[1]:
        return None
    return GatewayProxy(workspace, lists[0], lists[1])


class GatewayCache(SnapshotCache):
    """A :class:`SnapshotCache` whose snapshots are the mesh snapshot plus, for gateway nodes, an overlay."""

    def __init__(self) -> None:
        super().__init__()
        self._base: dict[str, Snapshot] = {}
        self._overlays: dict[str, Overlay] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        self._base[node_id] = snapshot
        return self._publish(node_id)

    def clear(self, node_id: str) -> None:
        self._base.pop(node_id, None)
        super().clear(node_id)

    def set_overlay(self, node_id: str, overlay: Overlay | None) -> bool:
        """Lay ``overlay`` over the node's mesh snapshot (None removes it)."""
        if overlay is None:
            if self._overlays.pop(node_id, None) is None:
                return False
        else:
            self._overlays[node_id] = overlay
        return self._publish(node_id)

    def _publish(self, node_id: str) -> bool:
        base = self._base.get(node_id)
        if base is None:  # the mesh part comes first (identity, the proxy's own resources)
            return False
        overlay = self._overlays.get(node_id)
        if not overlay:
            return super().set_snapshot(node_id, base)
        return super().set_snapshot(node_id, Snapshot.of_resources(mesh_leg.fuse(base, overlay)))


class GatewayReconciler:
    def __init__(self, store: ResourceStore, gateways: GatewayStore, cache: GatewayCache) -> None:
        self.store = store
        self.gateways = gateways
        self.cache = cache
        self.proxies: dict[str, GatewayProxy] = {}  # node id -> what it serves
        self.errors: dict[str, str] = {}  # node id -> why its configuration is not current
        self._memo: dict[_MemoKey, Overlay] = {}
        # (mesh, name) -> mesh services its workspace names
        self._legs: dict[tuple[str, str], frozenset[str]] = {}
        self._notes: dict[
            tuple[str, int], dict[str, list[str]]
        ] = {}  # (workspace, generation) -> explain notes
        self._notes_key: dict[str, tuple[str, int]] = {}  # workspace -> its current key in _notes
        self._hostnames: dict[str, dict[str, str]] = {}  # mesh -> generated hostname -> kuma.io/service
        # set by the control plane: generate a mesh again (isthmus.cp.reconciler.Reconciler.request_sync)
        self.request_sync: Callable[[str], None] | None = None

    def kong_notes(self, mesh: str, name: str, service: str) -> list[str]:
        """For ``isthmus explain`` of gateway proxy ``mesh``/``name``: what its Kong Services to mesh service
        ``service`` set over the mesh's policies for that leg (the Kong value wins)."""
        proxy = self.proxies.get(f"{mesh}.{name}")
        key = self._notes_key.get(proxy.workspace) if proxy is not None else None
        return list(self._notes.get(key, {}).get(service, ())) if key is not None else []

    def mesh_services(self, mesh: str, name: str) -> frozenset[str]:
        """The mesh services gateway proxy ``mesh``/``name`` reaches by their mesh names (its mesh legs)."""
        return self._legs.get((mesh, name), frozenset())

    def _set_legs(self, nid: str, services: frozenset[str]) -> None:
        mesh, _, name = nid.partition(".")
        if self._legs.get((mesh, name), frozenset()) == services:
            return
        if services:
            self._legs[(mesh, name)] = services
        else:
            self._legs.pop((mesh, name), None)
        if self.request_sync is not None:
            self.request_sync(mesh)

    async def run(self) -> None:
        queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        async with self.store.subscribe() as events, asyncio.TaskGroup() as tg:
            tg.create_task(_drain(events, queue))
            page = await self.store.list("Dataplane")
            for record in page.items:
                self._track(record)
            for mesh in {nid.partition(".")[0] for nid in self.proxies}:
                await self._refresh_hostnames(mesh)
            await self._rebuild(set(self.proxies))
            while True:
                batch = await _next_batch(queue)
                if batch is None:
                    return
                try:
                    await self._apply(batch)
                except Exception:  # the loop must survive anything (CancelledError is not an Exception)
                    log.exception("gateway generation: unexpected error; continuing")

    async def _apply(self, batch: Iterable[ChangeEvent]) -> None:
        dirty: set[str] = set()
        workspaces: set[str] = set()
        for ev in batch:
            if ev.mesh.startswith(SCOPE_PREFIX):
                workspaces.add(ev.mesh[len(SCOPE_PREFIX) :])
            elif ev.type == "Dataplane":
                nid = node_id_or_none(ev.mesh, ev.name)
                if nid is None:
                    continue
                record = await self.store.get("Dataplane", ev.mesh, ev.name)
                if record is None or not self._track(record):
                    if self.proxies.pop(nid, None) is not None:
                        self.cache.set_overlay(nid, None)
                        self.errors.pop(nid, None)
                        self._set_legs(nid, frozenset())
                    continue
                dirty.add(nid)
            elif ev.type == "Mesh":  # the mesh part may have been rebuilt: lay the overlay again
                dirty.update(n for n in self.proxies if n.startswith(ev.name + "."))
            elif ev.type == "MeshService" and await self._refresh_hostnames(ev.mesh):
                dirty.update(n for n in self.proxies if n.startswith(ev.mesh + "."))
        dirty.update(n for n, p in self.proxies.items() if p.workspace in workspaces)
        await self._rebuild(dirty)

    async def _refresh_hostnames(self, mesh: str) -> bool:
        """Read the mesh's generated hostnames again; whether they changed."""
        names = mesh_names.hostname_services((await self.store.list("MeshService", mesh)).items)
        changed = self._hostnames.get(mesh, {}) != names
        self._hostnames[mesh] = names
        return changed

    def _track(self, record: Record) -> bool:
        proxy = gateway_of(record)
        nid = node_id_or_none(record.mesh, record.name)
        if proxy is None or nid is None:
            return False
        self.proxies[nid] = proxy
        return True

    async def _rebuild(self, nodes: set[str]) -> None:
        live: set[_MemoKey] = set()
        for nid in sorted(nodes):
            proxy = self.proxies.get(nid)
            if proxy is None:
                continue
            ws = await self.gateways.workspace(proxy.workspace)
            mesh = nid.partition(".")[0]
            if mesh not in self._hostnames:
                await self._refresh_hostnames(mesh)
            names = mesh_names.used(ws.entities, self._hostnames[mesh])
            view = mesh_names.resolve(ws.entities, names) if names else ws.entities
            self._set_legs(nid, mesh_leg.mesh_services(view))
            if self._notes_key.get(proxy.workspace) != (proxy.workspace, ws.generation):
                self._notes.pop(self._notes_key.get(proxy.workspace, ("", -1)), None)
                self._notes_key[proxy.workspace] = (proxy.workspace, ws.generation)
                self._notes[(proxy.workspace, ws.generation)] = mesh_leg.notes(view)
            key = (proxy.workspace, ws.generation, proxy.listen, proxy.listen_tls, mesh_names.digest(names))
            live.add(key)
            overlay = self._memo.get(key)
            if overlay is None:
                # a copy of the collections (entities are replaced, never changed, on write), translated in a
                # worker thread: 10,000 routes must not stall the ADS streams and the Admin API
                entities = {collection: dict(items) for collection, items in view.items()}
                try:
                    overlay = await asyncio.to_thread(
                        translate, proxy.workspace, entities, proxy.listen, proxy.listen_tls
                    )
                except Exception as exc:  # a bad input keeps the proxy's last configuration
                    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                    if self.errors.get(nid) != message:
                        log.error("gateway %s: translation failed: %s; it keeps its last configuration", nid, message)  # fmt: skip
                    self.errors[nid] = message
                    continue
                self._memo[key] = overlay
            self.errors.pop(nid, None)
            self.cache.set_overlay(nid, overlay)
        # keep one translation per workspace and listen set: drop older generations
        current = {(p.workspace, p.listen, p.listen_tls) for p in self.proxies.values()}
        for key in [k for k in self._memo if (k[0], k[2], k[3]) not in current or (k not in live and _newer(k, live))]:  # fmt: skip
            del self._memo[key]


def _newer(key: _MemoKey, live: set[_MemoKey]) -> bool:
    """A live key of the same workspace and listens supersedes ``key`` (a later generation, or other hostnames)."""
    return any(
        k[0] == key[0] and k[2:4] == key[2:4] and (k[1] > key[1] or (k[1] == key[1] and k[4] != key[4]))
        for k in live
    )


async def _drain(events: AsyncIterator[ChangeEvent], queue: asyncio.Queue[ChangeEvent | None]) -> None:
    async for ev in events:
        queue.put_nowait(ev)
    queue.put_nowait(None)


async def _next_batch(queue: asyncio.Queue[ChangeEvent | None]) -> list[ChangeEvent] | None:
    first = await queue.get()
    if first is None:
        return None
    batch = [first]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DEBOUNCE_SECONDS):
            while True:
                ev = await queue.get()
                if ev is None:
                    return None
                batch.append(ev)
    return batch
