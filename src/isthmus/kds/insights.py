"""``Zone`` and ``ZoneInsight`` records on the global: a zone is created on its first connection; each KDS
connection is a subscription of its ZoneInsight (connect and disconnect times, the global instance that held
it, the zone's status). A zone is online while its last subscription is open on this global instance."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from isthmus.resources.registry import Registry, to_document
from isthmus.resources.zone import subscription_online
from isthmus.store.base import AlreadyExists, Conflict, NotFound, Op, OpKind, Record, ResourceStore

MAX_SUBSCRIPTIONS = 10


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _update(store: ResourceStore, type_: str, name: str, edit: Any) -> None:
    """Read-modify-write of a global record, retried on concurrent writes; ``edit(spec) -> spec``."""
    for _ in range(10):
        record = await store.get(type_, "", name)
        spec = edit(dict(record.spec) if record is not None else {})
        op = Op(
            OpKind.UPSERT,
            type_,
            "",
            name,
            spec=spec,
            labels=dict(record.labels) if record is not None else {},
            expected_version=record.version if record is not None else 0,
        )
        try:
            await store.write([op])
            return
        except (Conflict, AlreadyExists, NotFound):
            await asyncio.sleep(0.01)
    raise Conflict(type_, "", name, 0, 0)


async def ensure_zone(store: ResourceStore, zone: str) -> Record:
    """The zone's ``Zone`` record, created (enabled) on its first connection."""
    record = await store.get("Zone", "", zone)
    if record is not None:
        return record
    try:
        await store.write([Op(OpKind.CREATE, "Zone", "", zone, spec={"enabled": True})])
    except AlreadyExists:
        pass
    found = await store.get("Zone", "", zone)
    assert found is not None
    return found


async def zone_connected(
    store: ResourceStore, zone: str, subscription: str, instance_id: str, version: dict[str, Any]
) -> None:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        subs = [s for s in spec.get("subscriptions") or [] if isinstance(s, dict)]
        for sub in subs:  # a subscription a crashed global left open is over
            sub.setdefault("disconnectTime", None)
            if not sub["disconnectTime"]:
                sub["disconnectTime"] = now_text()
        subs.append(
            {
                "id": subscription,
                "globalInstanceId": instance_id,
                "connectTime": now_text(),
                "status": {},
                "version": version,
            }
        )
        return {"subscriptions": [_clean(s) for s in subs[-MAX_SUBSCRIPTIONS:]]}

    await _update(store, "ZoneInsight", zone, edit)


def _clean(sub: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sub.items() if v is not None}


async def zone_status(store: ResourceStore, zone: str, subscription: str, status: dict[str, Any]) -> None:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        subs = [dict(s) for s in spec.get("subscriptions") or [] if isinstance(s, dict)]
        for sub in subs:
            if sub.get("id") == subscription:
                sub["status"] = {**status, "lastUpdateTime": now_text()}
        return {"subscriptions": subs}

    await _update(store, "ZoneInsight", zone, edit)


async def zone_disconnected(store: ResourceStore, zone: str, subscription: str) -> None:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        subs = [dict(s) for s in spec.get("subscriptions") or [] if isinstance(s, dict)]
        for sub in subs:
            if sub.get("id") == subscription and not sub.get("disconnectTime"):
                sub["disconnectTime"] = now_text()
        return {"subscriptions": subs}

    await _update(store, "ZoneInsight", zone, edit)


async def zone_overviews(store: ResourceStore, registry: Registry, instance_id: str) -> list[dict[str, Any]]:
    """Kuma's ``ZoneOverview`` of every zone, with Isthmus's ``online``, ``lastConnectTime`` and
    ``lastDisconnectTime``."""
    zones = (await store.list("Zone")).items
    insights = {r.name: r for r in (await store.list("ZoneInsight")).items}
    out = []
    for zone in zones:
        doc = to_document(zone, registry)
        insight = insights.get(zone.name)
        spec = insight.spec if insight is not None else {}
        subs = [s for s in spec.get("subscriptions") or [] if isinstance(s, dict)]
        last = subs[-1] if subs else {}
        out.append(
            {
                "type": "ZoneOverview",
                "name": zone.name,
                "creationTime": doc["creationTime"],
                "modificationTime": doc["modificationTime"],
                "zone": {"enabled": zone.spec.get("enabled", True) is not False},
                "zoneInsight": spec,
                "online": subscription_online(spec, instance_id),
                "lastConnectTime": last.get("connectTime"),
                "lastDisconnectTime": last.get("disconnectTime"),
            }
        )
    return out
