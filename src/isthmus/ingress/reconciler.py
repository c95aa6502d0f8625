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

import logging
from typing import Any

from isthmus.ingress.available import available_services
from isthmus.ingress.build import IngressIR, build_ingress_ir
from isthmus.ingress.loop import ZoneProxyLoop
from isthmus.ingress.node import ingress_node_id
from isthmus.ingress.translate import translate_ingress
from isthmus.resources.registry import from_record
from isthmus.store.base import Op, OpKind
from isthmus.xds.snapshot import Resource as XdsResource
from isthmus.xds.snapshot import Snapshot

log = logging.getLogger(__name__)


class IngressReconciler(ZoneProxyLoop):
    kinds = ("ZoneIngress",)
    label = "zone ingresses"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxies: dict[str, IngressIR] = {}  # node id -> what it serves (inspect)

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
