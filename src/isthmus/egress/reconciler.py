"""The control plane's loop for zone egresses: after the mesh generation loop has rebuilt a mesh's context (or a
ZoneEgress/ZoneIngress changed), it builds each of this zone's egresses (:mod:`isthmus.egress.build`) into the
snapshot cache under its node id, with a certificate of every mesh whose MeshExternalService traffic it
terminates (``spiffe://<mesh>/zone-egress``, issued by the mesh's CA, rotated like a sidecar's).

A ZoneEgress of another zone (labelled with it) is never served here; a global control plane serves none.
"""

from __future__ import annotations

import logging

from isthmus.cp.certificates import WorkloadCertificates
from isthmus.cp.reconciler import Reconciler
from isthmus.egress.build import EgressIR, build_egress_ir
from isthmus.egress.node import EGRESS_SERVICE
from isthmus.egress.translate import translate_egress
from isthmus.ingress.loop import ZoneProxyLoop
from isthmus.ir.build import ca_secret_name, identity_secret_name
from isthmus.ir.model import Secret
from isthmus.resources.registry import Registry, from_record
from isthmus.store.base import Op, OpKind, Record, ResourceStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.snapshot import Resource as XdsResource
from isthmus.xds.snapshot import Snapshot

log = logging.getLogger(__name__)


class EgressReconciler(ZoneProxyLoop):
    kinds = ("ZoneEgress", "ZoneIngress")
    label = "zone egresses"

    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        cache: SnapshotCache,
        meshes: Reconciler,
        certificates: WorkloadCertificates,
        *,
        mode: str = "standalone",
        zone: str = "",
    ) -> None:
        super().__init__(store, registry, cache, meshes, mode=mode, zone=zone)
        self.certificates = certificates
        self.proxies: dict[str, EgressIR] = {}  # node id -> what it serves (inspect)
        self._served: dict[str, tuple[EgressIR, tuple[Secret, ...]]] = {}

    async def _secrets(self, ir: EgressIR) -> tuple[Secret, ...]:
        out: list[Secret] = []
        for mesh in ir.meshes:
            ctx = self.meshes.contexts.get(mesh)
            backend = ctx.spec.enabled_backend if ctx is not None else None
            if ctx is None or backend is None:
                continue
            ca = await self.certificates.backend_ca(self.store, mesh, backend)
            issued = self.certificates.identity(
                f"{ir.node_id}:{mesh}",
                ca=ca,
                mesh=mesh,
                services=(EGRESS_SERVICE,),
                tags={"kuma.io/service": (EGRESS_SERVICE,)},
                lifetime=backend.cert_lifetime,
            )
            cert = issued.certificate
            out.append(Secret(identity_secret_name(mesh), cert.cert_pem.decode(), cert.key_pem.decode()))
            out.append(Secret(ca_secret_name(mesh), trusted_ca=ctx.ca_certificate))
        return tuple(out)

    async def sync(self) -> None:
        contexts = dict(self.meshes.contexts)
        seen: set[str] = set()
        for record in (await self.store.list("ZoneEgress")).items:
            if not self._own(record):
                continue
            try:
                res = from_record(record, self.registry)
            except Exception as exc:
                log.error("stored ZoneEgress %r skipped: %s", record.name, exc)
                continue
            if self.zone and not record.spec.get("zone"):
                await self._fill_zone(record)
            ir = build_egress_ir(res, contexts, self.zone)
            seen.add(ir.node_id)
            self.proxies[ir.node_id] = ir
            secrets = await self._secrets(ir)
            if self._served.get(ir.node_id) == (ir, secrets):
                continue
            packed = {
                t: [XdsResource.of(t, m) for m in msgs] for t, msgs in translate_egress(ir, secrets).items()
            }
            self.cache.set_snapshot(ir.node_id, Snapshot.of_resources(packed))
            self._served[ir.node_id] = (ir, secrets)
        for nid in [n for n in self.proxies if n not in seen]:
            del self.proxies[nid]
            self._served.pop(nid, None)
            for mesh in list(self.meshes.contexts):
                self.certificates.forget(f"{nid}:{mesh}")
            self.cache.clear(nid)

    async def _fill_zone(self, record: Record) -> None:
        """Kuma's zone control plane sets ``zone`` on its own egresses."""
        try:
            await self.store.write(
                [
                    Op(
                        OpKind.UPSERT,
                        "ZoneEgress",
                        "",
                        record.name,
                        spec={**record.spec, "zone": self.zone},
                        labels=dict(record.labels),
                        expected_version=record.version,
                    )
                ]
            )
        except Exception as exc:  # a concurrent write: its event brings this loop back
            log.warning("ZoneEgress %r: zone not written: %s", record.name, exc)
