"""Who may write what in a multi-zone deployment: the REST API asks a :class:`WriteGuard` before every write.

On a zone control plane, kinds made on the global (Mesh, MeshMultiZoneService, ...) are refused, and so is
changing or deleting any copy the zone got from the global; policies (and other kinds a zone may make) are
accepted, labelled ``kuma.io/origin: zone`` and ``kuma.io/zone: <zone>``, and stay in the zone. On the global,
copies of zones' resources are read-only and kinds that only zones make (Dataplane, ZoneIngress, ...) are
refused. ``ZoneInsight`` is written by the control plane only; ``Zone`` exists on the global only.
"""

from __future__ import annotations

from isthmus.cp.api.errors import ApiError
from isthmus.kds.sync import ORIGIN, ORIGIN_GLOBAL, ORIGIN_ZONE, UPSTREAM, ZONE, is_copy_in_zone
from isthmus.resources.registry import KdsScope, ResourceType
from isthmus.store.base import Record, ResourceStore

GLOBAL_ONLY_KINDS = ("Zone", "ZoneInsight")
CP_WRITTEN_KINDS = ("ZoneInsight",)


class WriteGuard:
    """``mode`` is ``global`` or ``zone``; ``zone`` and ``global_address`` name this zone and its global."""

    def __init__(self, store: ResourceStore, mode: str, *, zone: str = "", global_address: str = "") -> None:
        if mode not in ("global", "zone"):
            raise ValueError(f"mode must be global or zone, not {mode!r}")
        self.store, self.mode, self.zone, self.global_address = store, mode, zone, global_address

    def _refuse(self, detail: str) -> ApiError:
        return ApiError(400, "Bad request", detail)

    def _on_global(self, what: str) -> ApiError:
        where = f" ({self.global_address})" if self.global_address else ""
        return self._refuse(
            f"{what} is managed by the global control plane{where}: apply it there; zone control plane "
            f"{self.zone!r} only holds a read-only copy synced from the global"
        )

    def _existing_refusal(self, rtype: ResourceType, record: Record | None) -> ApiError | None:
        if record is None:
            return None
        what = f"{rtype.kind} {record.name!r}"
        if self.mode == "zone" and is_copy_in_zone(record, self.zone):
            owner = record.labels.get(ZONE)
            if record.labels.get(ORIGIN) == ORIGIN_GLOBAL or not owner:
                return self._on_global(what)
            return self._refuse(
                f"{what} was synced from zone {owner!r} through the global control plane: it is read-only "
                f"here; change it on zone {owner!r}'s control plane"
            )
        if self.mode == "global" and record.labels.get(ORIGIN) == ORIGIN_ZONE and record.labels.get(ZONE):
            owner = record.labels[ZONE]
            return self._refuse(
                f"{what} was synced from zone {owner!r}: it is read-only on the global control plane; "
                f"change it on zone {owner!r}'s control plane"
            )
        return None

    def _kind_refusal(self, rtype: ResourceType) -> ApiError | None:
        if rtype.kind in CP_WRITTEN_KINDS:
            return self._refuse(f"{rtype.kind} is written by the control plane, not through the API")
        if self.mode == "zone":
            if rtype.kind in GLOBAL_ONLY_KINDS:
                return self._refuse(f"{rtype.kind} exists on the global control plane only")
            if rtype.sync is KdsScope.FROM_GLOBAL:
                return self._on_global(rtype.kind)
        elif rtype.sync in UPSTREAM:
            return self._refuse(
                f"{rtype.kind} resources are made in zones: register it with a zone control plane, which syncs "
                "it to the global"
            )
        return None

    async def check_put(
        self, rtype: ResourceType, mesh: str, name: str, labels: dict[str, str]
    ) -> dict[str, str]:
        """The labels to store for a write the API accepts; ApiError (400) naming the owner otherwise."""
        refusal = self._existing_refusal(rtype, await self.store.get(rtype.kind, mesh, name))
        refusal = refusal or self._kind_refusal(rtype)
        if refusal is not None:
            raise refusal
        if self.mode == "zone" and rtype.sync is not KdsScope.LOCAL:
            if labels.get(ORIGIN) == ORIGIN_GLOBAL or labels.get(ZONE, self.zone) != self.zone:
                raise self._refuse(
                    f"labels: {ORIGIN}/{ZONE} say the resource comes from elsewhere; a resource made on zone "
                    f"{self.zone!r} has {ORIGIN}: zone and {ZONE}: {self.zone}"
                )
            return {**labels, ORIGIN: ORIGIN_ZONE, ZONE: self.zone}
        return labels

    async def check_delete(self, rtype: ResourceType, mesh: str, name: str) -> None:
        refusal = self._existing_refusal(rtype, await self.store.get(rtype.kind, mesh, name))
        if refusal is None and self.mode == "zone" and rtype.sync is KdsScope.FROM_GLOBAL:
            refusal = self._on_global(rtype.kind)
        if refusal is None and rtype.kind in CP_WRITTEN_KINDS:
            refusal = self._refuse(f"{rtype.kind} is written by the control plane, not through the API")
        if refusal is not None:
            raise refusal
