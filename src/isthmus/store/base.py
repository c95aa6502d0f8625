"""The resource store contract: records, write operations, change events and errors.

A store keeps resources as JSON-able ``spec`` dicts keyed by ``(type, mesh, name)``. It knows nothing of the
pydantic models in :mod:`isthmus.resources`; validation happens before a write reaches the store.

Every record carries an integer ``version`` that starts at 1 and grows by one on each update (optimistic
concurrency: a write that names an ``expected_version`` that is no longer current raises :class:`Conflict`).
Global-scoped resources (``Mesh``, ``Secret`` of the control plane, ...) use ``mesh == ""``.

:meth:`ResourceStore.write` applies a batch of operations atomically: either all of them happen or none does.
After a successful write the store publishes one :class:`ChangeEvent` per operation to every subscriber; an
update (or upsert) that leaves spec and labels unchanged is a no-op: no new version, no event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol


class StoreError(Exception):
    """Base class of store errors."""


class NotFound(StoreError):
    def __init__(self, type: str, mesh: str, name: str) -> None:
        self.type, self.mesh, self.name = type, mesh, name
        where = f" in mesh {mesh!r}" if mesh else ""
        super().__init__(f"{type} {name!r}{where} not found")


class AlreadyExists(StoreError):
    def __init__(self, type: str, mesh: str, name: str) -> None:
        self.type, self.mesh, self.name = type, mesh, name
        where = f" in mesh {mesh!r}" if mesh else ""
        super().__init__(f"{type} {name!r}{where} already exists")


class Conflict(StoreError):
    """The resource changed since the caller read it (stale ``expected_version``)."""

    def __init__(self, type: str, mesh: str, name: str, expected: int, actual: int) -> None:
        self.type, self.mesh, self.name = type, mesh, name
        self.expected, self.actual = expected, actual
        super().__init__(
            f"{type} {name!r} was modified concurrently: expected version {expected}, current is {actual}"
        )


MAX_OFFSET = 1_000_000_000
"""The largest ``offset`` (and ``limit``) :meth:`ResourceStore.list` takes; larger ones raise ValueError (SQL
databases keep them in 64-bit integers)."""


@dataclass(frozen=True)
class Key:
    type: str
    mesh: str
    name: str


@dataclass(frozen=True)
class Record:
    """One stored resource."""

    type: str
    mesh: str
    name: str
    spec: dict[str, Any]
    labels: dict[str, str]
    version: int
    creation_time: datetime
    modification_time: datetime

    @property
    def key(self) -> Key:
        return Key(self.type, self.mesh, self.name)


class OpKind(str, Enum):
    CREATE = "create"  # fails with AlreadyExists if present
    UPDATE = "update"  # fails with NotFound if absent; Conflict on a stale expected_version
    UPSERT = "upsert"  # create or update; honours expected_version when given (0 means "must not exist")
    DELETE = "delete"  # fails with NotFound if absent; Conflict on a stale expected_version


@dataclass(frozen=True)
class Op:
    kind: OpKind
    type: str
    mesh: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    expected_version: int | None = None


class EventKind(str, Enum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class ChangeEvent:
    kind: EventKind
    type: str
    mesh: str
    name: str
    version: int


@dataclass(frozen=True)
class Page:
    items: list[Record]
    total: int


class ResourceStore(Protocol):
    """What every backend (memory, SQLite, later PostgreSQL) provides."""

    async def start(self) -> None:
        """Open connections / create tables. Idempotent."""

    async def close(self) -> None:
        """Release connections and end every subscription."""

    async def get(self, type: str, mesh: str, name: str) -> Record | None: ...

    async def list(
        self, type: str, mesh: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> Page:
        """Records of ``type`` ordered by (mesh, name); ``mesh=None`` means every mesh. ``offset`` and ``limit``
        are within 0..:data:`MAX_OFFSET` (ValueError otherwise)."""

    async def write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        """Apply ``ops`` atomically. Returns, per op, the new record (``None`` for deletes)."""

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ChangeEvent]]:
        """``async with store.subscribe() as events: async for ev in events: ...``"""


class EventBus:
    """In-process fan-out of change events to subscribers, each with its own unbounded queue."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[ChangeEvent | None]] = set()

    def publish(self, events: Sequence[ChangeEvent]) -> None:
        for q in self._queues:
            for ev in events:
                q.put_nowait(ev)

    def close(self) -> None:
        for q in self._queues:
            q.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[ChangeEvent]]:
        q: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        self._queues.add(q)

        async def _iter() -> AsyncIterator[ChangeEvent]:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                yield ev

        try:
            yield _iter()
        finally:
            self._queues.discard(q)
