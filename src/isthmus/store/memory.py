"""In-memory store: the reference implementation of :class:`~isthmus.store.base.ResourceStore`.

Used by tests and ``--store memory``. It also hosts :func:`apply_ops`, the pure function that decides what a
batch of operations does (and whether it may happen at all); the SQL store runs the same function inside its
transaction, so both backends follow exactly the same rules.

Specs and labels are stored as JSON documents: a write serialises them (so a spec that is not JSON fails the
same way on every backend, and tuples come back as lists everywhere) and every read hands out a fresh copy.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from isthmus.store.base import (
    MAX_OFFSET,
    AlreadyExists,
    ChangeEvent,
    Conflict,
    EventBus,
    EventKind,
    Key,
    NotFound,
    Op,
    OpKind,
    Page,
    Record,
)

__all__ = ["BatchEffect", "MemoryStore", "apply_ops", "check_page_args", "copy_record", "dump_json"]


def dump_json(op: Op, what: str, value: Any) -> str:
    """``value`` as JSON text; ValueError naming the resource if it is not a JSON document."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{op.type} {op.name!r}: {what} is not JSON-serialisable: {exc}") from None


def copy_record(record: Record) -> Record:
    """A copy of ``record`` that shares no mutable state with it."""
    return Record(
        record.type,
        record.mesh,
        record.name,
        json.loads(json.dumps(record.spec)),
        dict(record.labels),
        record.version,
        record.creation_time,
        record.modification_time,
    )


def check_page_args(offset: int, limit: int | None) -> None:
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be within 0..{MAX_OFFSET} (got {offset})")
    if limit is not None and not 0 <= limit <= MAX_OFFSET:
        raise ValueError(f"limit must be within 0..{MAX_OFFSET} (got {limit})")


@dataclass(frozen=True)
class BatchEffect:
    """What a batch does: the final state of every touched key (``None`` = deleted), one result per op (new
    record, ``None`` for deletes) and one event per op that changed something (a create or update that leaves
    spec and labels as they are is a no-op: no new version, no event)."""

    changes: dict[Key, Record | None]
    results: list[Record | None]
    events: list[ChangeEvent]


def apply_ops(current: Mapping[Key, Record], ops: Sequence[Op], now: datetime) -> BatchEffect:
    """Check ``ops`` in order against ``current`` and compute their effect, changing nothing.

    Later ops see the effect of earlier ops of the same batch. Raises :class:`NotFound`, :class:`AlreadyExists`
    or :class:`Conflict` (or ValueError for a spec that is not JSON) at the first op that cannot apply, so a
    caller that only commits a returned effect gets all-or-nothing. ``current`` must hold every touched key that
    exists. The records in ``changes`` and ``results`` are separate objects (the results may go to the caller).
    """
    changes: dict[Key, Record | None] = {}
    results: list[Record | None] = []
    events: list[ChangeEvent] = []

    for op in ops:
        kind = OpKind(op.kind)
        key = Key(op.type, op.mesh, op.name)
        existing = changes[key] if key in changes else current.get(key)
        actual = existing.version if existing is not None else 0

        if kind is OpKind.CREATE and existing is not None:
            raise AlreadyExists(op.type, op.mesh, op.name)
        if kind in (OpKind.UPDATE, OpKind.DELETE) and existing is None:
            raise NotFound(op.type, op.mesh, op.name)
        if op.expected_version is not None and op.expected_version != actual:
            raise Conflict(op.type, op.mesh, op.name, op.expected_version, actual)

        if kind is OpKind.DELETE:
            changes[key] = None
            results.append(None)
            events.append(ChangeEvent(EventKind.DELETED, op.type, op.mesh, op.name, actual))
            continue

        spec = json.loads(dump_json(op, "spec", op.spec))
        labels = json.loads(dump_json(op, "labels", op.labels))
        if existing is not None and existing.spec == spec and existing.labels == labels:
            # Unchanged: no new version, no event (agents register their unchanged Dataplane at every start).
            results.append(copy_record(existing))
            continue
        if existing is None:
            record = Record(op.type, op.mesh, op.name, spec, labels, 1, now, now)
            events.append(ChangeEvent(EventKind.CREATED, op.type, op.mesh, op.name, 1))
        else:
            record = Record(op.type, op.mesh, op.name, spec, labels, actual + 1, existing.creation_time, now)
            events.append(ChangeEvent(EventKind.UPDATED, op.type, op.mesh, op.name, record.version))
        changes[key] = record
        results.append(copy_record(record))
    return BatchEffect(changes, results, events)


class MemoryStore:
    """Records in a dict; writes serialised by an :class:`asyncio.Lock`; events published before the lock is
    released, so subscribers see them in commit order."""

    def __init__(self) -> None:
        self._records: dict[Key, Record] = {}
        self._lock = asyncio.Lock()
        self._bus = EventBus()
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            self._bus = EventBus()
            self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus.close()

    async def get(self, type: str, mesh: str, name: str) -> Record | None:
        record = self._records.get(Key(type, mesh, name))
        return copy_record(record) if record is not None else None

    async def list(
        self, type: str, mesh: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> Page:
        check_page_args(offset, limit)
        matching = sorted(
            (r for r in self._records.values() if r.type == type and (mesh is None or r.mesh == mesh)),
            key=lambda r: (r.mesh, r.name),
        )
        end = None if limit is None else offset + limit
        return Page([copy_record(r) for r in matching[offset:end]], len(matching))

    async def write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        if not ops:
            return []
        async with self._lock:
            effect = apply_ops(self._records, ops, datetime.now(UTC))
            for key, record in effect.changes.items():
                if record is None:
                    self._records.pop(key, None)
                else:
                    self._records[key] = record
            self._bus.publish(effect.events)
        return effect.results

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ChangeEvent]]:
        if self._closed:
            raise RuntimeError("store is closed")
        return self._bus.subscribe()
