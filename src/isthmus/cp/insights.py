"""Per data plane status, fed by the ADS server's callbacks: online/offline, ACKed and NACKed versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from isthmus.xds import types

TYPE_NAMES = {
    types.CLUSTER: "cds",
    types.ENDPOINT: "eds",
    types.LISTENER: "lds",
    types.ROUTE: "rds",
    types.SECRET: "sds",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass
class Nack:
    type_url: str
    version: str
    error: str
    time: datetime


@dataclass
class Subscription:
    stream_id: int
    connect_time: datetime
    disconnect_time: datetime | None = None
    responses_sent: int = 0
    acks: int = 0
    nacks: int = 0


@dataclass
class NodeInsight:
    subscriptions: list[Subscription] = field(default_factory=list)
    open_streams: set[int] = field(default_factory=set)
    last_sent: dict[str, str] = field(default_factory=dict)
    last_ack: dict[str, str] = field(default_factory=dict)
    last_nack: Nack | None = None

    @property
    def online(self) -> bool:
        return bool(self.open_streams)

    def last_disconnect(self) -> datetime | None:
        times = [s.disconnect_time for s in self.subscriptions if s.disconnect_time is not None]
        return max(times) if times else None


class Insights:
    """Implements the ADS server's callbacks (cheap, synchronous) and renders Kuma-like insight documents."""

    MAX_SUBSCRIPTIONS = 5

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInsight] = {}
        # called with a node id when it connects, disconnects or ACKs new secrets (MeshService status)
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, node_id: str) -> None:
        for listener in self.listeners:
            listener(node_id)

    def _node(self, node_id: str) -> NodeInsight:
        return self.nodes.setdefault(node_id, NodeInsight())

    def _sub(self, node_id: str, stream_id: int) -> Subscription | None:
        for sub in self._node(node_id).subscriptions:
            if sub.stream_id == stream_id:
                return sub
        return None

    # XdsCallbacks ---------------------------------------------------------------------------------------------
    def on_stream_open(self, stream_id: int, node_id: str, node: Any) -> None:
        n = self._node(node_id)
        was_online = n.online
        n.open_streams.add(stream_id)
        n.subscriptions.append(Subscription(stream_id, _now()))
        del n.subscriptions[: -self.MAX_SUBSCRIPTIONS]
        if not was_online:
            self._changed(node_id)

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        n = self._node(node_id)
        was_online = n.online
        n.open_streams.discard(stream_id)
        sub = self._sub(node_id, stream_id)
        if sub is not None:
            sub.disconnect_time = _now()
        if was_online and not n.online:
            self._changed(node_id)

    def on_response_sent(self, stream_id: int, node_id: str, type_url: str, version: str, nonce: str) -> None:
        self._node(node_id).last_sent[type_url] = version
        sub = self._sub(node_id, stream_id)
        if sub is not None:
            sub.responses_sent += 1

    def on_ack(self, stream_id: int, node_id: str, type_url: str, version: str) -> None:
        previous = self._node(node_id).last_ack.get(type_url)
        self._node(node_id).last_ack[type_url] = version
        if type_url == types.SECRET and previous != version:
            self._changed(node_id)
        sub = self._sub(node_id, stream_id)
        if sub is not None:
            sub.acks += 1

    def on_nack(
        self, stream_id: int, node_id: str, type_url: str, rejected_version: str, error_message: str
    ) -> None:
        self._node(node_id).last_nack = Nack(type_url, rejected_version, error_message, _now())
        sub = self._sub(node_id, stream_id)
        if sub is not None:
            sub.nacks += 1

    # bounded state ------------------------------------------------------------------------------------------
    def last_seen(self, node_id: str, now: datetime | None = None) -> datetime | None:
        """``now`` if the node has a stream open, else when its last stream closed; None if this process has
        not seen it."""
        n = self.nodes.get(node_id)
        if n is None:
            return None
        if n.online:
            return now or _now()
        return n.last_disconnect() or (n.subscriptions[-1].connect_time if n.subscriptions else None)

    def prune(self, offline_before: datetime, keep: Callable[[str], bool] = lambda _: False) -> list[str]:
        """Forget the nodes offline since before ``offline_before`` for which ``keep(node_id)`` is false (the
        Dataplanes that exist are kept, however long they are offline). Returns the node ids forgotten."""
        gone = []
        for node_id, n in list(self.nodes.items()):
            if n.online or keep(node_id):
                continue
            seen = self.last_seen(node_id)
            if seen is None or seen < offline_before:
                gone.append(node_id)
                del self.nodes[node_id]
        return gone

    # rendering ----------------------------------------------------------------------------------------------
    def document(self, node_id: str) -> dict[str, Any]:
        n = self.nodes.get(node_id) or NodeInsight()
        return {
            "online": n.online,
            "subscriptions": [
                {
                    "id": str(s.stream_id),
                    "connectTime": _iso(s.connect_time),
                    "disconnectTime": _iso(s.disconnect_time),
                    "status": {"responsesSent": s.responses_sent, "acks": s.acks, "nacks": s.nacks},
                }
                for s in n.subscriptions
            ],
            "lastSent": {TYPE_NAMES.get(k, k): v for k, v in sorted(n.last_sent.items())},
            "lastAck": {TYPE_NAMES.get(k, k): v for k, v in sorted(n.last_ack.items())},
            "lastNack": (
                {
                    "typeUrl": n.last_nack.type_url,
                    "version": n.last_nack.version,
                    "error": n.last_nack.error,
                    "time": _iso(n.last_nack.time),
                }
                if n.last_nack
                else None
            ),
        }
