"""``isthmus get zones``: each zone of a global control plane, online or offline, with its last connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from isthmus.cli.output import age

ZONE_HEADERS = ("NAME", "STATUS", "LAST CONNECTED", "LAST DISCONNECTED", "DATAPLANES")


def _when(value: Any, now: datetime | None) -> str:
    return f"{value} ({age(value, now)} ago)" if value else "-"


def zone_rows(items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    rows = []
    for item in items:
        enabled = (item.get("zone") or {}).get("enabled", True) is not False
        status = "Online" if item.get("online") else "Offline"
        if not enabled:
            status += " (disabled)"
        subs = (item.get("zoneInsight") or {}).get("subscriptions") or []
        counts = (subs[-1].get("status") or {}).get("dataplanes") if subs else None
        dataplanes = (
            f"{counts.get('online', 0)}/{counts.get('total', 0)}" if isinstance(counts, dict) else "-"
        )
        rows.append(
            [
                str(item.get("name", "")),
                status,
                _when(item.get("lastConnectTime"), now),
                _when(item.get("lastDisconnectTime"), now),
                dataplanes,
            ]
        )
    return rows
