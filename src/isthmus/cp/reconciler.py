"""The generation loop: store change events -> mesh context -> per-proxy IR -> xDS snapshot -> cache.

One task runs :meth:`Reconciler.run`. It coalesces bursts of events, rebuilds the context of each mesh that
changed, and regenerates only the proxies whose inputs changed: the mesh-wide configuration (Mesh, policies,
CA), the proxy's own Dataplane, the endpoints of the services its clusters point at, and its certificate. A new
instance of a service therefore regenerates only the proxies that reach that service, and a Dataplane written
again unchanged (the store does not even publish an event for it) regenerates nothing.

Nothing stored can stop the loop. Every step is contained:

* a stored record that no longer validates (validation grows stricter over time) is reported, not parsed: a
  Dataplane is left out (its proxy keeps its last configuration), a Mesh or a policy makes its whole mesh keep
  its last good configuration (leaving a policy out could widen what traffic is allowed);
* a failure while building one mesh's context (its CA, its context) leaves the other meshes served and that
  mesh's proxies on their last good configuration;
* a failure for one proxy (its certificate, its IR, its translation, a MeshProxyPatch that leaves a dangling
  reference) keeps that proxy's last good snapshot;
* anything unexpected is logged and the mesh is retried later; the loop itself only ends when cancelled.

Errors are kept in :attr:`Reconciler.mesh_errors`, :attr:`Reconciler.record_errors` and
:attr:`ProxyState.error`, shown by ``inspect``, and counted in the metrics of
:mod:`isthmus.cp.generation_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.cp.certificates import IssuedIdentity, WorkloadCertificates, sds_versions
from isthmus.cp.generation_status import GenerationError, GenerationMetrics
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import ProxyIR
from isthmus.pki.ca import CertificateAuthority
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import from_pydantic
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.meshservice import NAME_KINDS
from isthmus.resources.registry import Registry, Resource, from_record
from isthmus.store.base import ChangeEvent, EventKind, Record, ResourceStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.node import mesh_name_usable, node_id, node_id_or_none
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed

ZONE_PROXY_KINDS = ("ZoneIngress", "ZoneEgress")  # isthmus.ingress / isthmus.egress
log = logging.getLogger(__name__)
DEBOUNCE_SECONDS = 0.02
RETRY_SECONDS = (1.0, 30.0)  # first and longest wait before a failed mesh is generated again
RecordKey = tuple[str, str, str]  # (type, mesh, name)
_Entry = tuple[dict[str, Any], dict[str, str], Resource | GenerationError]  # spec, labels, parsed
InputsKey = tuple[object, ...]  # what a proxy's configuration was built (or failed to build) from


@dataclass
class ProxyState:
    mesh: str
    name: str
    inputs_key: InputsKey | None  # what its current configuration was built from; None: never built
    ir: ProxyIR | None
    snapshot: Snapshot | None
    error: str = ""
    generated_at: datetime | None = None
    error_stage: str = ""
    services: tuple[str, ...] = ()  # the services its clusters point at (sorted)


class MeshFailed(Exception):
    """A step that concerns the whole mesh failed; its proxies keep their last good configuration."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class Reconciler:
    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        cache: SnapshotCache,
        certificates: WorkloadCertificates,
        metrics: CollectorRegistry | None = None,
        gateway_services: Callable[[str, str], frozenset[str]] | None = None,
    ) -> None:
        self.store = store
        # (mesh, Dataplane name) -> the mesh services a gateway proxy's Kong configuration reaches (its mesh leg,
        # isthmus.gateway.reconciler); request_sync(mesh) when they change
        self.gateway_services = gateway_services
        # (mesh, name, service) -> what the gateway's Kong entities set over the mesh's policies (isthmus explain)
        self.gateway_notes: Callable[[str, str, str], list[str]] | None = None
        self._queue: asyncio.Queue[ChangeEvent | None] | None = None
        self.registry = registry
        self.cache = cache
        self.certificates = certificates
        self.metrics = GenerationMetrics(metrics)
        self.contexts: dict[str, MeshContext] = {}
        self.proxies: dict[str, ProxyState] = {}
        self.mesh_errors: dict[str, GenerationError] = {}
        self.record_errors: dict[RecordKey, GenerationError] = {}
        self._ready = asyncio.Event()
        self.generations = 0
        # mesh -> (type, name) -> (spec, labels, parsed): the records of each mesh as last read (the Mesh record
        # itself under ("Mesh", mesh)); once a mesh was read in full, events say which records to read again
        self._records: dict[str, dict[tuple[str, str], _Entry]] = {}
        self._complete: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # mesh -> (monotonic time due, last wait)
        self._rotation_pass = float("-inf")  # when the last pass for due certificates started (monotonic)
        self.zone = ""  # multi-zone: this control plane's zone (isthmus.ingress: locality, remote endpoints)
        self._ingresses: list[Resource] | None = None  # the ZoneIngresses as last read (None: read again)
        self.on_synced: Callable[[str], None] | None = None  # after a mesh is generated (isthmus.ingress)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def dataplane_spec(self, mesh: str, name: str) -> dict[str, Any] | None:
        """The stored spec of Dataplane ``mesh``/``name`` as the generation loop last read it (its proxy's
        configuration is generated from it), None when the loop has not read it (not yet, or not any more).
        ADS stream authentication checks a token against it instead of reading the store per stream."""
        entry = self._records.get(mesh, {}).get(("Dataplane", name))
        return entry[0] if entry is not None else None

    def error_for(self, mesh: str, name: str) -> GenerationError | None:
        """Why the Dataplane's configuration is not current, if it is not: its mesh, its record or itself."""
        if mesh in self.mesh_errors:
            return self.mesh_errors[mesh]
        if (bad := self.record_errors.get(("Dataplane", mesh, name))) is not None:
            return bad
        nid = node_id_or_none(mesh, name)
        state = self.proxies.get(nid) if nid is not None else None
        if state is not None and state.error:
            return GenerationError(state.error_stage or "generation", state.error, datetime.now(UTC))
        return None

    # -- main loop -------------------------------------------------------------------------------------------
    def request_sync(self, mesh: str) -> None:
        """Generate ``mesh`` again soon (its proxies whose inputs did not change are skipped)."""
        if self._queue is not None:
            self._queue.put_nowait(ChangeEvent(EventKind.UPDATED, "Mesh", "", mesh, 0))

    async def run(self) -> None:
        queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        self._queue = queue
        async with self.store.subscribe() as events, asyncio.TaskGroup() as tg:
            # the event iterator is drained by its own task: timeouts below must never cancel it
            tg.create_task(self._drain(events, queue))
            started = time.monotonic()
            await self.sync_all()
            log.info(
                "first generation: %d proxies of %d meshes in %.2fs",
                len(self.proxies),
                len(self.contexts),
                time.monotonic() - started,
            )
            self._ready.set()
            while True:
                try:
                    dirty = await self._next_batch(queue)
                    if dirty is None:
                        return
                    for mesh, changed in sorted(dirty.items()):
                        await (self.sync_all() if mesh == "" else self.sync_mesh(mesh, changed))
                except Exception:  # never let the generation loop die (CancelledError is not an Exception)
                    log.exception("generation loop: unexpected error; continuing")
                    await asyncio.sleep(RETRY_SECONDS[0])

    @staticmethod
    async def _drain(events: AsyncIterator[ChangeEvent], queue: asyncio.Queue[ChangeEvent | None]) -> None:
        async for ev in events:
            queue.put_nowait(ev)
        queue.put_nowait(None)

    async def _next_batch(
        self, queue: asyncio.Queue[ChangeEvent | None]
    ) -> dict[str, set[tuple[str, str]] | None] | None:
        """The meshes to generate again, each with the (type, name) of its records that changed (None: read them
        all again): those touched by the next burst of events, every mesh when a certificate is due, the failed
        meshes whose retry is due ("" stands for listing the meshes again). None when the store closed."""
        now = time.monotonic()
        deadlines = [at for at, _ in self._retry.values()]
        due = self.certificates.next_rotation()
        if due is not None:
            at = now + (due - datetime.now(UTC)).total_seconds()
            deadlines.append(max(at, self._rotation_pass + RETRY_SECONDS[0]))  # at most one pass a second
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        dirty: dict[str, set[tuple[str, str]] | None] = {}

        def add(ev: ChangeEvent) -> None:
            if ev.type == "Mesh":
                dirty.setdefault(ev.name, set())
            elif ev.type in ZONE_PROXY_KINDS:  # other zones' endpoints, the zone's egresses (isthmus.ingress)
                self._ingresses = None
                for name in self.contexts:
                    dirty.setdefault(name, set())
            elif ev.mesh:  # resources outside any mesh do not concern generation
                changed = dirty.setdefault(ev.mesh, set())
                if changed is not None:
                    changed.add((ev.type, ev.name))

        try:
            async with asyncio.timeout(timeout):
                first = await queue.get()
        except TimeoutError:
            pass
        else:
            if first is None:
                return None
            add(first)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEBOUNCE_SECONDS):
                    while True:
                        ev = await queue.get()
                        if ev is None:
                            return None
                        add(ev)
        now = time.monotonic()
        if due is not None and due <= datetime.now(UTC) and now >= self._rotation_pass + RETRY_SECONDS[0]:
            self._rotation_pass = now
            for mesh in self.contexts:
                dirty.setdefault(mesh, set())
        for mesh, (at, _) in self._retry.items():
            if at <= now:
                dirty[mesh] = None
        return dirty

    # -- generation ------------------------------------------------------------------------------------------
    async def sync_all(self) -> None:
        try:
            page = await self.store.list("Mesh")
            names = {r.name for r in page.items} | set(self.contexts) | set(self.mesh_errors)
            self._retry.pop("", None)
        except Exception:
            log.exception("listing the meshes failed; retrying")
            self._schedule_retry("")
            names = set(self.contexts) | set(self.mesh_errors)
        for name in sorted(names):
            await self.sync_mesh(name)

    async def sync_mesh(self, mesh: str, changed: set[tuple[str, str]] | None = None) -> None:
        """Bring every proxy of ``mesh`` up to date; ``changed``: the (type, name) of the records that changed
        since the last call, None to read every record of the mesh again. Never raises (except CancelledError)."""
        started = time.monotonic()
        try:
            await self._sync_mesh(mesh, changed)
        except MeshFailed as exc:
            self._mesh_failed(mesh, exc.stage, str(exc))
            if exc.stage == "mesh_ca":  # the store may be unavailable for a moment
                self._schedule_retry(mesh)
        except Exception as exc:
            log.exception("generating mesh %r failed", mesh)
            self._complete.discard(mesh)  # records named by events may not have been read: read them all next
            self._mesh_failed(mesh, "sync", f"{type(exc).__name__}: {exc}")
            self._schedule_retry(mesh)
        else:
            self._retry.pop(mesh, None)
            if self.on_synced is not None:
                self.on_synced(mesh)
        finally:
            self.metrics.seconds.observe(time.monotonic() - started)

    def _mesh_failed(self, mesh: str, stage: str, message: str) -> None:
        previous = self.mesh_errors.get(mesh)
        if previous is None or previous.describe() != f"{stage}: {message}":
            log.error("mesh %r is not generated (%s): %s; its proxies keep their last configuration", mesh, stage, message)  # fmt: skip
        self.mesh_errors[mesh] = GenerationError(stage, message, datetime.now(UTC))
        self.metrics.error(mesh, stage)
        self.metrics.meshes_in_error.set(len(self.mesh_errors))

    def _schedule_retry(self, mesh: str) -> None:
        last = self._retry.get(mesh, (0.0, 0.0))[1]
        wait = min(RETRY_SECONDS[1], last * 2) if last else RETRY_SECONDS[0]
        self._retry[mesh] = (time.monotonic() + wait, wait)

    async def _sync_mesh(self, mesh: str, changed: set[tuple[str, str]] | None) -> None:
        record = await self.store.get("Mesh", "", mesh)
        if record is None:
            self._forget_mesh(mesh)
            return
        if not mesh_name_usable(mesh):
            raise MeshFailed(
                "node_id", f"mesh name {mesh!r} contains '.', so its node ids could collide; rename the mesh"
            )
        mesh_res = self._parse(record)
        if isinstance(mesh_res, GenerationError):
            raise MeshFailed("load", f"stored Mesh {mesh!r} is not valid: {mesh_res.message}")
        if changed is None or mesh not in self._complete:
            await self._load_all(mesh)
        else:
            await self._load_changed(mesh, changed)
        dataplanes: list[Resource] = []
        policies: list[Resource] = []
        invalid: list[str] = []
        bad: list[str] = []
        for (kind, name), (_, _, parsed) in sorted(self._records.get(mesh, {}).items()):
            if kind == "Mesh":
                continue
            if isinstance(parsed, GenerationError):
                if kind == "Dataplane":
                    invalid.append(name)
                else:
                    bad.append(parsed.message)
                self.metrics.error(mesh, "load")
            elif kind == "Dataplane":
                dataplanes.append(parsed)
            else:
                policies.append(parsed)
        if bad:
            raise MeshFailed("load", "stored policies are not valid: " + "; ".join(bad))
        spec = mesh_res.spec
        assert isinstance(spec, MeshSpec)
        backend = spec.enabled_backend
        ca: CertificateAuthority | None = None
        lifetime: timedelta | None = None
        if backend is not None:
            try:
                lifetime = backend.cert_lifetime
            except Exception as exc:
                raise MeshFailed("certificate", f"dpCert.rotation.expiration: {exc}") from None
        try:  # the signing CA and the trust bundle (both CAs while the mesh's CA changes)
            trust = await self.certificates.mesh_trust(
                self.store, mesh, spec, sds_versions(self.proxies.items(), mesh)
            )
            ca = trust.signing_ca if trust else None
        except Exception as exc:
            log.exception("the CA of mesh %r could not be loaded or created", mesh)
            raise MeshFailed("mesh_ca", f"{type(exc).__name__}: {exc}") from None
        try:
            ctx = build_mesh_context(
                mesh_res,
                dataplanes,
                policies,
                trust.bundle_pem if trust else "",
                ingresses=await self._zone_ingresses(),
                zone=self.zone,
            )
        except Exception as exc:
            log.exception("the context of mesh %r could not be built", mesh)
            raise MeshFailed("mesh_context", f"{type(exc).__name__}: {exc}") from None
        self.contexts[mesh] = ctx
        if self.mesh_errors.pop(mesh, None) is not None:
            log.info("mesh %r is generated again", mesh)
            self.metrics.meshes_in_error.set(len(self.mesh_errors))
        for i, dp in enumerate(ctx.dataplanes.values()):
            self._proxy(ctx, dp, ca, lifetime)
            if i % 50 == 49:
                await asyncio.sleep(0)  # let the ADS streams breathe during large regenerations
        # a proxy whose record is not valid any more keeps its last snapshot; a removed one is forgotten
        keep = set(ctx.dataplanes) | set(invalid)
        for nid in [n for n, p in self.proxies.items() if p.mesh == mesh and p.name not in keep]:
            self._drop(nid)
        self.metrics.set_proxies_in_error(
            mesh, sum(1 for p in self.proxies.values() if p.mesh == mesh and p.error)
        )

    async def _zone_ingresses(self) -> list[Resource]:
        """Every ZoneIngress (this zone's and, synced, the other zones'), read again after a change."""
        if self._ingresses is None:
            out: list[Resource] = []
            # ZoneEgresses too: a mesh with routing.zoneEgress goes through them
            for kind in ZONE_PROXY_KINDS:
                for record in (await self.store.list(kind)).items:
                    try:
                        out.append(from_record(record, self.registry))
                    except Exception as exc:  # an invalid record only loses its endpoints
                        log.error("stored %s %r skipped: %s", kind, record.name, exc)
            self._ingresses = out
        return self._ingresses

    def _forget_mesh(self, mesh: str) -> None:
        self.contexts.pop(mesh, None)
        self.certificates.forget_mesh(mesh)
        self._records.pop(mesh, None)
        self._complete.discard(mesh)
        self.record_errors.pop(("Mesh", "", mesh), None)
        self.record_errors = {k: v for k, v in self.record_errors.items() if k[1] != mesh}
        for nid in [n for n, p in self.proxies.items() if p.mesh == mesh]:
            self._drop(nid)
        self._retry.pop(mesh, None)
        if self.mesh_errors.pop(mesh, None) is not None:
            self.metrics.meshes_in_error.set(len(self.mesh_errors))
        self.metrics.forget_mesh(mesh)

    def _tracked(self, kind: str) -> bool:
        if kind == "Dataplane" or kind in NAME_KINDS:
            return True
        return (rtype := self.registry.kind(kind)) is not None and rtype.is_policy

    def _parse(self, record: Record) -> Resource | GenerationError:
        """The record as a resource, or why it is not valid any more (remembered per content)."""
        mesh = record.name if record.type == "Mesh" else record.mesh
        records = self._records.setdefault(mesh, {})
        local = (record.type, record.name)
        cached = records.get(local)
        if cached is None or cached[0] != record.spec or cached[1] != record.labels:
            key = (record.type, record.mesh, record.name)
            result: Resource | GenerationError
            try:
                result = from_record(record, self.registry)
                self.record_errors.pop(key, None)
            except Exception as exc:
                if isinstance(exc, ValidationError):
                    prefix = "" if record.type in ("Mesh", "Dataplane") else "spec"
                    exc = from_pydantic(exc, prefix)
                reason = " ".join(str(exc).split())
                message = f"{record.type} {record.name!r} is not valid any more: {reason}"
                result = GenerationError("load", message, datetime.now(UTC))
                self.record_errors[key] = result
                log.error("stored %s %r in mesh %r skipped: %s", record.type, record.name, mesh, reason)
            cached = records[local] = (record.spec, record.labels, result)
        return cached[2]

    def _forget_record(self, kind: str, mesh: str, name: str) -> None:
        self._records.get(mesh, {}).pop((kind, name), None)
        self.record_errors.pop((kind, mesh, name), None)

    async def _load_all(self, mesh: str) -> None:
        """Read every Dataplane and policy of the mesh."""
        for kind in ["Dataplane", *(t.kind for t in self.registry.policies()), *NAME_KINDS]:
            page = await self.store.list(kind, mesh)
            for record in page.items:
                self._parse(record)
            live = {r.name for r in page.items}
            for k, name in [k for k in self._records.get(mesh, {}) if k[0] == kind and k[1] not in live]:
                self._forget_record(k, mesh, name)
        self._complete.add(mesh)

    async def _load_changed(self, mesh: str, changed: set[tuple[str, str]]) -> None:
        """Read again the records the events named (the latest state: a record changed twice is read once)."""
        for kind, name in sorted(changed):
            if not self._tracked(kind):
                continue
            record = await self.store.get(kind, mesh, name)
            if record is None:
                self._forget_record(kind, mesh, name)
            else:
                self._parse(record)

    def _drop(self, nid: str) -> None:
        self.proxies.pop(nid, None)
        self.cache.clear(nid)
        self.certificates.forget(nid)

    def _proxy(
        self, ctx: MeshContext, dp: Resource, ca: CertificateAuthority | None, lifetime: timedelta | None
    ) -> None:
        """Regenerate one proxy if its inputs changed; a failure keeps its last good snapshot."""
        nid = node_id(ctx.name, dp.name)
        state = self.proxies.get(nid)
        issued: IssuedIdentity | None = None
        if ca is not None and lifetime is not None:
            try:
                spec = dp.spec
                assert isinstance(spec, DataplaneSpec)
                issued = self.certificates.identity(
                    nid,
                    ca=ca,
                    mesh=ctx.name,
                    services=tuple(spec.services),
                    tags=_tag_values(dp),
                    lifetime=lifetime,
                )
            except Exception as exc:
                self._proxy_failed(ctx, dp, nid, state, _failed_key(ctx, dp, None), "certificate", exc)
                return
        if state is not None and state.error:
            key = _failed_key(ctx, dp, issued)  # retried when anything in the mesh changes
        else:
            key = _inputs_key(ctx, dp, state.services if state is not None else (), issued)
        legs = self.gateway_services(ctx.name, dp.name) if self.gateway_services is not None else frozenset()
        if legs:
            key = (*key, tuple(sorted(legs)))
        if state is not None and state.inputs_key == key:
            return
        identity = None
        if issued is not None:
            identity = Identity(issued.certificate.cert_pem.decode(), issued.certificate.key_pem.decode())
        stage = "ir"
        try:
            ir = build_proxy_ir(ctx, dp.name, identity, legs)
            stage = "translate"
            snapshot = Snapshot.of_resources(translate_packed(ir))
            # Generated resources are consistent by construction (every golden case and protocol test checks
            # it); user-supplied MeshProxyPatch modifications can reference anything, so those are checked here.
            problems = snapshot.consistency_errors() if ir.patches else []
            if problems:
                raise ValueError("inconsistent snapshot: " + "; ".join(problems))
        except Exception as exc:  # a bad input must not break the other proxies
            self._proxy_failed(ctx, dp, nid, state, _failed_key(ctx, dp, issued), stage, exc)
            return
        services = tuple(sorted({c.service for c in ir.clusters if c.service}))
        key = _inputs_key(ctx, dp, services, issued)
        if legs:
            key = (*key, tuple(sorted(legs)))
        self.proxies[nid] = ProxyState(
            ctx.name, dp.name, key, ir, snapshot, "", datetime.now(UTC), "", services
        )
        self.cache.set_snapshot(nid, snapshot)
        self.generations += 1
        self.metrics.generated.inc()

    def _proxy_failed(
        self,
        ctx: MeshContext,
        dp: Resource,
        nid: str,
        state: ProxyState | None,
        key: InputsKey,
        stage: str,
        exc: Exception,
    ) -> None:
        message = (
            f"{type(exc).__name__}: {' '.join(str(exc).split())}" if stage == "certificate" else str(exc)
        )
        if state is None or state.error != message:
            log.error(
                "generating config for %s failed (%s): %s; it keeps its last configuration",
                nid,
                stage,
                message,
            )
            log.debug("generating config for %s failed", nid, exc_info=exc)
        self.metrics.error(ctx.name, stage)
        self.proxies[nid] = ProxyState(
            ctx.name,
            dp.name,
            key,  # the same failing inputs are not tried again
            state.ir if state else None,
            state.snapshot if state else None,
            message,
            state.generated_at if state else None,
            stage,
            state.services if state else (),
        )


def _inputs_key(
    ctx: MeshContext, dp: Resource, services: tuple[str, ...], issued: IssuedIdentity | None
) -> InputsKey:
    endpoints = tuple((s, ctx.service_digests.get(s, "")) for s in services)
    return (ctx.config_hash, dp.digest, endpoints, issued.certificate.serial if issued else 0)


def _failed_key(ctx: MeshContext, dp: Resource, issued: IssuedIdentity | None) -> InputsKey:
    return ("failed", ctx.hash, dp.digest, issued.certificate.serial if issued else 0)


def _tag_values(dp: Resource) -> dict[str, tuple[str, ...]]:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    values: dict[str, set[str]] = {}
    for inbound in spec.networking.inbound:
        for k, v in inbound.tags.items():
            if k != "kuma.io/service":
                values.setdefault(k, set()).add(v)
    return {k: tuple(sorted(v)) for k, v in values.items()}
