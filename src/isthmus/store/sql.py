"""SQL store on SQLAlchemy 2 (async): SQLite via aiosqlite now; PostgreSQL (asyncpg) by URL later.

One generic table, as Kuma's: ``resources(type, mesh, name, spec, labels, version, creation_time,
modification_time)`` with primary key ``(type, mesh, name)``; ``spec`` and ``labels`` are JSON text and the
timestamps ISO-8601 text in UTC, which every SQL database stores the same way.

:meth:`SqlStore.write` runs the whole batch in one transaction. It reads the rows the batch touches (``FOR
UPDATE`` where the database has it), computes the effect with :func:`~isthmus.store.memory.apply_ops` (the same
rules as the memory store), then writes each row with a version guard (``UPDATE ... WHERE version = :seen``,
rowcount checked; a duplicate key on INSERT is caught). Two processes racing on one row therefore get
:class:`~isthmus.store.base.Conflict` (or ``AlreadyExists``), never a lost update, and any failing op rolls the
whole batch back. Change events go to the in-process :class:`~isthmus.store.base.EventBus` after the commit.

SQLite specifics: WAL journal, ``synchronous=FULL``, a 30 s busy timeout, and write transactions opened with
``BEGIN IMMEDIATE`` (the write lock is taken up front, so two writers never deadlock upgrading a read lock).
Reads use a plain ``BEGIN``, which in WAL mode gives them a consistent snapshot without blocking writers.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    event,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.schema import CreateTable

from isthmus.store.base import (
    AlreadyExists,
    ChangeEvent,
    Conflict,
    EventBus,
    Key,
    Op,
    OpKind,
    Page,
    Record,
)
from isthmus.store.memory import apply_ops, check_page_args, dump_json

__all__ = ["SqlStore", "metadata", "resources"]

BUSY_TIMEOUT_SECONDS = 30
_KEYS_PER_QUERY = 500  # stays far below SQLite's bound-parameter limit
_WRITE_OPTION = "isthmus_write"

metadata = MetaData()
resources = Table(
    "resources",
    metadata,
    Column("type", String(128), primary_key=True),
    Column("mesh", String(253), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("creation_time", String(40), nullable=False),
    Column("modification_time", String(40), nullable=False),
)

# Plain drivers are swapped for their asyncio counterparts, so "sqlite:///x.db" works as well.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def _async_url(url: str) -> URL:
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def _private_database_file(path: Path) -> None:
    """Create the database file (and a missing parent directory) readable by the owner only: 0600 (0700),
    whatever the umask; SQLite gives its -wal and -shm files the database file's mode."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            os.chmod(part, 0o600)


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database or url.query.get("mode") == "memory"


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row_to_record(row: Any) -> Record:
    return Record(
        row.type,
        row.mesh,
        row.name,
        json.loads(row.spec),
        json.loads(row.labels),
        row.version,
        _parse_timestamp(row.creation_time),
        _parse_timestamp(row.modification_time),
    )


def _row_values(record: Record, op: Op) -> dict[str, Any]:
    return {
        "spec": dump_json(op, "spec", record.spec),
        "labels": dump_json(op, "labels", record.labels),
        "version": record.version,
        "creation_time": _timestamp(record.creation_time),
        "modification_time": _timestamp(record.modification_time),
    }


def _pk(key: Key) -> ColumnElement[bool]:
    return and_(resources.c.type == key.type, resources.c.mesh == key.mesh, resources.c.name == key.name)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides where transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class SqlStore:
    """A :class:`~isthmus.store.base.ResourceStore` in a SQL database reached through an async SQLAlchemy URL,
    e.g. ``sqlite+aiosqlite:///relative.db`` or ``sqlite+aiosqlite:////abs/path.db``."""

    def __init__(self, url: str) -> None:
        self.url = _async_url(url)
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._bus = EventBus()
        self._closed = False
        # One writer at a time per process: events leave in commit order and in-process writers never spin on
        # SQLite's busy timeout. Other processes are kept out by the database itself.
        self._write_lock = asyncio.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not started: call start() first")
        return self._engine

    async def start(self) -> None:
        if self._engine is not None:
            return
        if self.is_sqlite:
            engine = self._create_sqlite_engine()
        else:
            engine = create_async_engine(self.url, pool_pre_ping=True)
        writer = engine.execution_options(**{_WRITE_OPTION: True})
        try:
            async with writer.begin() as conn:
                await conn.execute(CreateTable(resources, if_not_exists=True))
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._writer = engine, writer
        if self._closed:
            self._bus, self._closed = EventBus(), False

    def _create_sqlite_engine(self) -> AsyncEngine:
        database = self.url.database or ""
        if _is_sqlite_memory(self.url):
            # A database in memory lives in its one connection: the pool holds exactly that connection, and
            # concurrent users wait for it in turn.
            engine = create_async_engine(
                self.url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0, pool_recycle=-1
            )
        else:
            if not database.startswith("file:"):
                _private_database_file(Path(database))
            engine = create_async_engine(self.url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
        _install_sqlite_hooks(engine)
        return engine

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus.close()
        engine, self._engine, self._writer = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    async def get(self, type: str, mesh: str, name: str) -> Record | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(resources).where(_pk(Key(type, mesh, name))))).first()
        return _row_to_record(row) if row is not None else None

    async def list(
        self, type: str, mesh: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> Page:
        check_page_args(offset, limit)
        where = resources.c.type == type
        if mesh is not None:
            where = and_(where, resources.c.mesh == mesh)
        query = select(resources).where(where).order_by(resources.c.mesh, resources.c.name).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn, conn.begin():  # one snapshot for the count and the rows
            total = (
                await conn.execute(select(func.count()).select_from(resources).where(where))
            ).scalar_one()
            rows = (await conn.execute(query)).all()
        return Page([_row_to_record(r) for r in rows], int(total))

    async def write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        if not ops:
            return []
        if self._writer is None:
            raise RuntimeError("store is not started: call start() first")
        # Shielded: once the transaction has begun it runs to its end even if the caller is cancelled, so a
        # commit is never left without its events (the caller still sees CancelledError).
        task = asyncio.ensure_future(self._write(tuple(ops)))
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _write(self, ops: Sequence[Op]) -> builtins.list[Record | None]:
        async with self._write_lock:
            if self._writer is None:
                raise RuntimeError("store is not started: call start() first")
            async with self._writer.begin() as conn:
                current = await self._load(conn, {Key(op.type, op.mesh, op.name) for op in ops})
                effect = apply_ops(current, ops, datetime.now(UTC))
                first_op: dict[Key, Op] = {}
                for op in ops:
                    first_op.setdefault(Key(op.type, op.mesh, op.name), op)
                for key, record in effect.changes.items():
                    await self._store_row(conn, key, current.get(key), record, first_op[key])
            self._bus.publish(effect.events)
        return effect.results

    @staticmethod
    async def _load(conn: AsyncConnection, keys: set[Key]) -> dict[Key, Record]:
        # Rows are read (and, where the database supports it, locked FOR UPDATE) in primary-key order, chunk by
        # chunk, so two writers locking overlapping rows take the locks in the same order.
        wanted = sorted(keys, key=lambda k: (k.type, k.mesh, k.name))
        pk = tuple_(resources.c.type, resources.c.mesh, resources.c.name)
        found: dict[Key, Record] = {}
        for start in range(0, len(wanted), _KEYS_PER_QUERY):
            chunk = wanted[start : start + _KEYS_PER_QUERY]
            query = (
                select(resources)
                .where(pk.in_([(k.type, k.mesh, k.name) for k in chunk]))
                .order_by(resources.c.type, resources.c.mesh, resources.c.name)
                .with_for_update()
            )
            for row in (await conn.execute(query)).all():
                record = _row_to_record(row)
                found[record.key] = record
        return found

    async def _store_row(
        self, conn: AsyncConnection, key: Key, seen: Record | None, record: Record | None, op: Op
    ) -> None:
        """Make the row of ``key`` match ``record`` (``None``: absent), guarded by the version ``seen``."""
        if seen is None and record is None:
            return  # created and deleted within this batch
        if seen is None:
            assert record is not None
            row = insert(resources).values(
                type=key.type, mesh=key.mesh, name=key.name, **_row_values(record, op)
            )
            try:
                if self.is_sqlite:
                    # BEGIN IMMEDIATE holds the database's write lock since the rows were read: no racing insert.
                    await conn.execute(row)
                else:
                    # Absent rows cannot be locked FOR UPDATE; a concurrent insert surfaces here. The savepoint
                    # keeps the transaction usable to read the winner's version for the error.
                    async with conn.begin_nested():
                        await conn.execute(row)
            except IntegrityError:
                if OpKind(op.kind) is OpKind.CREATE:
                    raise AlreadyExists(key.type, key.mesh, key.name) from None
                raise Conflict(key.type, key.mesh, key.name, 0, await _current_version(conn, key)) from None
            return
        guard = and_(_pk(key), resources.c.version == seen.version)
        if record is None:
            result = await conn.execute(delete(resources).where(guard))
        else:
            result = await conn.execute(update(resources).where(guard).values(**_row_values(record, op)))
        if result.rowcount != 1:
            raise Conflict(key.type, key.mesh, key.name, seen.version, await _current_version(conn, key))

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ChangeEvent]]:
        if self._closed:
            raise RuntimeError("store is closed")
        return self._bus.subscribe()


async def _current_version(conn: AsyncConnection, key: Key) -> int:
    version = (await conn.execute(select(resources.c.version).where(_pk(key)))).scalar_one_or_none()
    return int(version) if version is not None else 0


def _consume_exception(task: asyncio.Future[Any]) -> None:
    # The shielded write may fail after its caller was cancelled; nobody else will read the error.
    if not task.cancelled():
        task.exception()
