"""The KDS wire protocol: one bidirectional gRPC stream per zone, JSON messages, and the publishing loop both
ends run over it.

The zone opens ``/isthmus.kds.v1.KDS/Sync`` on the global with ``authorization: Bearer <zone token>`` in the
metadata. Messages are JSON objects with one key:

* ``hello`` (first message each way): from the zone ``{"zone", "version", "have": {"Type/mesh/name": digest}}``
  (the copies of global resources it holds); from the global ``{"instanceId", "have": ["Type/mesh/name"]}``
  (the zone's resources it holds, by their names in the zone).
* ``changes``: ``{"nonce", "upsert": [resource], "remove": [[type, mesh, name]]}``; the receiver applies the
  batch atomically and answers ``ack`` ``{"nonce"}`` or ``nack`` ``{"nonce", "error"}``.
* ``insight`` (zone -> global): the zone's status (its data planes, online or not).

After the hellos each side sends only what the other does not hold yet, so a reconnect resyncs only what
changed; then every change in its store that concerns the other side (see :mod:`isthmus.kds.sync`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from isthmus.kds.sync import Changes, Key, Wire, apply_to, diff, key_of
from isthmus.resources.registry import ResourceType
from isthmus.store.base import ChangeEvent, Record, ResourceStore

log = logging.getLogger(__name__)

SERVICE = "isthmus.kds.v1.KDS"
METHOD = "Sync"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
ZONE_HEADER = "x-isthmus-zone"
MAX_MESSAGE = 64 * 1024 * 1024
BATCH = 200  # resources per changes message
COALESCE = 0.02  # seconds of store events gathered into one publication

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),  # gRPC's name of MIN_RECV_PING_INTERVAL
    ("grpc.http2.max_pings_without_data", 0),
]


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"a KDS message is not JSON: {exc}") from None
    if not isinstance(message, dict) or len(message) != 1:
        raise ProtocolError("a KDS message must be an object with one key")
    return message


def message_kind(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((kind, body),) = message.items()
    if not isinstance(body, dict):
        raise ProtocolError(f"KDS message {kind!r}: its body must be an object")
    return kind, body


Select = Callable[[ResourceType, Record], Wire | None]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Publisher:
    """Keeps the peer's copy of the selected records equal to this store's: sends the difference between
    what the peer holds (``have``) and what the store has now, at start and after every store change of one of
    ``types`` (a change re-reads only the kinds it touched)."""

    def __init__(
        self,
        store: ResourceStore,
        types: list[ResourceType],
        select: Select,
        send: Send,
        *,
        before_snapshot: Callable[[set[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.types = {t.kind: t for t in types}
        self.select = select
        self.send = send
        self.before_snapshot = before_snapshot
        self.have: dict[Key, str] = {}
        self._nonces = itertools.count(1)
        self.pending: dict[str, float] = {}  # nonce -> when sent
        self.sent = 0
        self.acked = 0

    async def snapshot(self, kinds: set[str]) -> dict[Key, Wire]:
        if self.before_snapshot is not None:
            await self.before_snapshot(kinds)
        want: dict[Key, Wire] = {}
        for kind in sorted(kinds):
            rtype = self.types[kind]
            page = await self.store.list(kind)
            for record in page.items:
                wire = self.select(rtype, record)
                if wire is not None:
                    want[key_of(wire)] = wire
        return want

    async def publish(self, kinds: set[str] | None = None) -> int:
        """Send what changed among ``kinds`` (None: every kind); the number of resources sent."""
        scope = set(self.types) if kinds is None else kinds & set(self.types)
        if not scope:
            return 0
        changes = diff(self.have, await self.snapshot(scope), scope)
        if not changes:
            return 0
        for start in range(0, max(len(changes.upsert), len(changes.remove)), BATCH):
            part = Changes(changes.upsert[start : start + BATCH], changes.remove[start : start + BATCH])
            nonce = str(next(self._nonces))
            self.pending[nonce] = time.monotonic()
            await self.send({"changes": {"nonce": nonce, **part.to_message()}})
            self.sent += 1
            apply_to(self.have, part)
        return len(changes.upsert) + len(changes.remove)

    def acknowledged(self, nonce: str, error: str | None = None) -> None:
        if self.pending.pop(nonce, None) is None:
            return
        if error is None:
            self.acked += 1
        else:
            log.warning("the peer refused KDS changes %s: %s", nonce, error)

    async def run(self, events: AsyncIterator[ChangeEvent]) -> None:
        """Publish everything, then every change (events gathered for :data:`COALESCE` seconds)."""
        await self.publish()
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def pump() -> None:
            async for event in events:
                if event.type in self.types:
                    queue.put_nowait(event.type)

        pump_task = asyncio.create_task(pump(), name="kds-events")
        try:
            while True:
                touched = {await queue.get()}
                await asyncio.sleep(COALESCE)
                while not queue.empty():
                    touched.add(queue.get_nowait())
                await self.publish(touched)
        finally:
            pump_task.cancel()
            await asyncio.wait([pump_task])  # our own cancellation still propagates
