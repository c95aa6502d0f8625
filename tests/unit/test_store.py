"""The resource store contract, run against every backend (memory and SQLite), plus SQLite-only durability and
multi-writer behaviour."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from isthmus.store import open_store
from isthmus.store.base import (
    AlreadyExists,
    ChangeEvent,
    Conflict,
    EventKind,
    NotFound,
    Op,
    OpKind,
    Record,
    ResourceStore,
)
from isthmus.store.memory import MemoryStore
from isthmus.store.sql import SqlStore

DP = "Dataplane"


def create(name: str, mesh: str = "default", type: str = DP, **spec: Any) -> Op:
    return Op(OpKind.CREATE, type, mesh, name, spec=dict(spec))


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s: ResourceStore = MemoryStore() if request.param == "memory" else SqlStore(sqlite_url(tmp_path / "s.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def next_event(events: AsyncIterator[ChangeEvent]) -> ChangeEvent:
    return await asyncio.wait_for(anext(events), timeout=2)


async def assert_no_event(events: AsyncIterator[ChangeEvent]) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(events), timeout=0.1)


def names(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.mesh, r.name) for r in records]


# --- CRUD --------------------------------------------------------------------------------------------------


async def test_create_get_update_delete(store: ResourceStore) -> None:
    [created] = await store.write(
        [Op(OpKind.CREATE, DP, "default", "web", spec={"port": 80, "tags": ["a"]}, labels={"team": "x"})]
    )
    assert created is not None
    assert (created.type, created.mesh, created.name, created.version) == (DP, "default", "web", 1)
    assert created.spec == {"port": 80, "tags": ["a"]}
    assert created.labels == {"team": "x"}
    assert created.creation_time == created.modification_time
    assert created.creation_time.utcoffset() == timedelta(0)

    got = await store.get(DP, "default", "web")
    assert got == created

    [updated] = await store.write([Op(OpKind.UPDATE, DP, "default", "web", spec={"port": 81})])
    assert updated is not None
    assert updated.version == 2
    assert updated.spec == {"port": 81}
    assert updated.labels == {}
    assert updated.creation_time == created.creation_time
    assert updated.modification_time >= created.modification_time
    assert updated.modification_time.utcoffset() == timedelta(0)
    assert await store.get(DP, "default", "web") == updated

    assert await store.write([Op(OpKind.DELETE, DP, "default", "web")]) == [None]
    assert await store.get(DP, "default", "web") is None


async def test_key_is_type_mesh_and_name(store: ResourceStore) -> None:
    await store.write(
        [create("a"), create("a", mesh="other"), create("a", type="Other"), create("m", mesh="")]
    )
    assert (await store.get(DP, "default", "a")) is not None
    assert (await store.get(DP, "other", "a")) is not None
    assert (await store.get("Other", "default", "a")) is not None
    assert (await store.get(DP, "", "m")) is not None  # global scope
    assert (await store.get(DP, "nope", "a")) is None
    await store.write([Op(OpKind.DELETE, DP, "other", "a")])
    assert (await store.get(DP, "default", "a")) is not None


async def test_errors_for_missing_and_duplicate(store: ResourceStore) -> None:
    await store.write([create("web")])
    with pytest.raises(AlreadyExists):
        await store.write([create("web")])
    with pytest.raises(NotFound):
        await store.write([Op(OpKind.UPDATE, DP, "default", "missing")])
    with pytest.raises(NotFound):
        await store.write([Op(OpKind.DELETE, DP, "default", "missing")])
    record = await store.get(DP, "default", "web")
    assert record is not None and record.version == 1


async def test_upsert_creates_then_updates(store: ResourceStore) -> None:
    [first] = await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"v": 1})])
    [second] = await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"v": 2})])
    assert first is not None and second is not None
    assert (first.version, second.version) == (1, 2)
    assert second.creation_time == first.creation_time
    got = await store.get(DP, "default", "web")
    assert got is not None and got.spec == {"v": 2}


async def test_empty_batch_is_a_no_op(store: ResourceStore) -> None:
    assert await store.write([]) == []


async def test_spec_that_is_not_json_is_rejected_and_nothing_written(store: ResourceStore) -> None:
    with pytest.raises(ValueError, match="not JSON"):
        await store.write([create("ok"), create("bad", when=object())])
    assert await store.get(DP, "default", "ok") is None


async def test_specs_are_normalised_to_json(store: ResourceStore) -> None:
    [record] = await store.write([create("web", ports=(80, 81), nested={"k": None})])
    assert record is not None and record.spec == {"ports": [80, 81], "nested": {"k": None}}
    got = await store.get(DP, "default", "web")
    assert got is not None and got.spec == {"ports": [80, 81], "nested": {"k": None}}


# --- copies ------------------------------------------------------------------------------------------------


async def test_records_are_independent_copies(store: ResourceStore) -> None:
    spec: dict[str, Any] = {"inbound": [{"port": 80}]}
    labels = {"team": "x"}
    [written] = await store.write([Op(OpKind.CREATE, DP, "default", "web", spec=spec, labels=labels)])
    spec["inbound"][0]["port"] = 1  # the caller's input
    labels["team"] = "changed"
    assert written is not None
    written.spec["inbound"].append({"port": 2})  # the write's result
    got = await store.get(DP, "default", "web")
    assert got is not None
    got.spec["inbound"][0]["port"] = 3  # a read's result
    got.labels["team"] = "y"
    page = await store.list(DP)
    page.items[0].spec["extra"] = True

    fresh = await store.get(DP, "default", "web")
    assert fresh is not None
    assert fresh.spec == {"inbound": [{"port": 80}]}
    assert fresh.labels == {"team": "x"}


# --- list --------------------------------------------------------------------------------------------------


async def test_list_orders_by_mesh_then_name_and_paginates(store: ResourceStore) -> None:
    await store.write(
        [
            create("b", "m2"),
            create("c", "m1"),
            create("a", "m2"),
            create("a", "m1"),
            create("z", "m3", type="Other"),
        ]
    )
    everything = await store.list(DP)
    assert everything.total == 4
    assert names(everything.items) == [("m1", "a"), ("m1", "c"), ("m2", "a"), ("m2", "b")]

    page = await store.list(DP, offset=1, limit=2)
    assert page.total == 4
    assert names(page.items) == [("m1", "c"), ("m2", "a")]
    assert names((await store.list(DP, offset=3, limit=10)).items) == [("m2", "b")]
    past_end = await store.list(DP, offset=10, limit=5)
    assert (past_end.items, past_end.total) == ([], 4)
    assert (await store.list(DP, limit=0)).items == []

    in_m2 = await store.list(DP, "m2")
    assert (names(in_m2.items), in_m2.total) == ([("m2", "a"), ("m2", "b")], 2)
    assert names((await store.list(DP, "m1", offset=1)).items) == [("m1", "c")]
    empty = await store.list(DP, "nowhere")
    assert (empty.items, empty.total) == ([], 0)
    assert names((await store.list("Other")).items) == [("m3", "z")]


async def test_list_filters_global_scope_separately(store: ResourceStore) -> None:
    await store.write([create("g", mesh="", type="Mesh"), create("h", mesh="", type="Mesh")])
    page = await store.list("Mesh", "")
    assert names(page.items) == [("", "g"), ("", "h")]


async def test_list_rejects_negative_bounds(store: ResourceStore) -> None:
    with pytest.raises(ValueError):
        await store.list(DP, offset=-1)
    with pytest.raises(ValueError):
        await store.list(DP, limit=-1)


# --- optimistic concurrency --------------------------------------------------------------------------------


async def test_stale_expected_version_conflicts_and_writes_nothing(store: ResourceStore) -> None:
    await store.write([create("web", v=1)])
    await store.write([Op(OpKind.UPDATE, DP, "default", "web", spec={"v": 2}, expected_version=1)])

    with pytest.raises(Conflict) as err:
        await store.write([Op(OpKind.UPDATE, DP, "default", "web", spec={"v": "stale"}, expected_version=1)])
    assert (err.value.expected, err.value.actual) == (1, 2)
    with pytest.raises(Conflict):
        await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"v": "stale"}, expected_version=1)])
    with pytest.raises(Conflict):
        await store.write([Op(OpKind.DELETE, DP, "default", "web", expected_version=1)])

    got = await store.get(DP, "default", "web")
    assert got is not None and (got.version, got.spec) == (2, {"v": 2})
    await store.write([Op(OpKind.DELETE, DP, "default", "web", expected_version=2)])
    assert await store.get(DP, "default", "web") is None


async def test_upsert_with_expected_version_zero_means_must_not_exist(store: ResourceStore) -> None:
    [record] = await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"v": 1}, expected_version=0)])
    assert record is not None and record.version == 1
    with pytest.raises(Conflict) as err:
        await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"v": 2}, expected_version=0)])
    assert (err.value.expected, err.value.actual) == (0, 1)
    got = await store.get(DP, "default", "web")
    assert got is not None and got.spec == {"v": 1}


async def test_update_of_absent_record_with_expected_version_is_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFound):
        await store.write([Op(OpKind.UPDATE, DP, "default", "web", expected_version=1)])
    with pytest.raises(Conflict):
        await store.write([Op(OpKind.UPSERT, DP, "default", "web", expected_version=3)])
    assert await store.get(DP, "default", "web") is None


# --- atomic batches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        (Op(OpKind.UPDATE, DP, "default", "missing"), NotFound),
        (Op(OpKind.CREATE, DP, "default", "existing"), AlreadyExists),
        (Op(OpKind.UPDATE, DP, "default", "existing", expected_version=7), Conflict),
    ],
)
async def test_failing_op_rolls_back_the_whole_batch(
    store: ResourceStore, failing: Op, error: type[Exception]
) -> None:
    await store.write([create("existing", v=1)])
    with pytest.raises(error):
        await store.write(
            [
                create("new-1"),
                Op(OpKind.UPDATE, DP, "default", "existing", spec={"v": 2}),
                create("new-2", mesh="other"),
                failing,
            ]
        )
    assert await store.get(DP, "default", "new-1") is None
    assert await store.get(DP, "other", "new-2") is None
    existing = await store.get(DP, "default", "existing")
    assert existing is not None and (existing.version, existing.spec) == (1, {"v": 1})
    assert (await store.list(DP, None)).total == 1


async def test_ops_in_a_batch_see_earlier_ops(store: ResourceStore) -> None:
    results = await store.write(
        [
            create("web", v=1),
            Op(OpKind.UPDATE, DP, "default", "web", spec={"v": 2}, expected_version=1),
            create("tmp"),
            Op(OpKind.DELETE, DP, "default", "tmp", expected_version=1),
        ]
    )
    assert [r.version if r else None for r in results] == [1, 2, 1, None]
    got = await store.get(DP, "default", "web")
    assert got is not None and (got.version, got.spec) == (2, {"v": 2})
    assert await store.get(DP, "default", "tmp") is None
    # Deleted and re-created in one batch: a new record starting again at version 1.
    [_, again] = await store.write([Op(OpKind.DELETE, DP, "default", "web"), create("web", v=3)])
    assert again is not None and again.version == 1


async def test_large_batches(store: ResourceStore) -> None:
    count = 1234  # more keys than the SQL store reads per query
    await store.write([create(f"dp-{i:04d}", mesh=f"m{i % 3}") for i in range(count)])
    assert (await store.list(DP)).total == count
    results = await store.write(
        [Op(OpKind.DELETE, DP, f"m{i % 3}", f"dp-{i:04d}", expected_version=1) for i in range(count)]
    )
    assert results == [None] * count
    assert (await store.list(DP)).total == 0


# --- events ------------------------------------------------------------------------------------------------


async def test_one_event_per_op_after_commit(store: ResourceStore) -> None:
    async with store.subscribe() as events:
        await store.write([create("a"), create("b")])
        await store.write(
            [Op(OpKind.UPDATE, DP, "default", "a", spec={"v": 2}), Op(OpKind.DELETE, DP, "default", "b")]
        )
        received = [await next_event(events) for _ in range(4)]
        await assert_no_event(events)
    assert [(e.kind, e.name, e.version) for e in received] == [
        (EventKind.CREATED, "a", 1),
        (EventKind.CREATED, "b", 1),
        (EventKind.UPDATED, "a", 2),
        (EventKind.DELETED, "b", 1),
    ]
    assert all((e.type, e.mesh) == (DP, "default") for e in received)


async def test_event_arrives_when_the_change_is_visible(store: ResourceStore) -> None:
    async with store.subscribe() as events:
        writer = asyncio.create_task(store.write([create("web", v=1)]))
        event = await next_event(events)
        seen = await store.get(DP, "default", "web")
        await writer
    assert event.kind is EventKind.CREATED
    assert seen is not None and seen.version == event.version


async def test_failed_batch_publishes_no_events(store: ResourceStore) -> None:
    async with store.subscribe() as events:
        with pytest.raises(NotFound):
            await store.write([create("a"), Op(OpKind.DELETE, DP, "default", "missing")])
        await store.write([create("b")])
        first = await next_event(events)
        await assert_no_event(events)
    assert (first.kind, first.name) == (EventKind.CREATED, "b")


async def test_every_subscriber_gets_every_event(store: ResourceStore) -> None:
    async with store.subscribe() as one, store.subscribe() as two:
        await store.write([create("a")])
        assert (await next_event(one)).name == "a"
        assert (await next_event(two)).name == "a"


async def test_close_ends_subscriptions(store: ResourceStore) -> None:
    async with store.subscribe() as events:

        async def drain() -> list[ChangeEvent]:
            return [e async for e in events]

        reader = asyncio.create_task(drain())
        await store.write([create("a")])
        await asyncio.sleep(0)
        await store.close()
        assert [e.name for e in await asyncio.wait_for(reader, timeout=2)] == ["a"]


# --- SQLite: durability and several writers ----------------------------------------------------------------


async def test_sqlite_restart_loses_nothing(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "cp.db")
    first = SqlStore(url)
    await first.start()
    await first.write([Op(OpKind.CREATE, DP, "default", "web", spec={"port": 80}, labels={"env": "prod"})])
    [updated] = await first.write([Op(OpKind.UPDATE, DP, "default", "web", spec={"port": 81})])
    await first.write([create("gone"), Op(OpKind.DELETE, DP, "default", "gone")])
    await first.write([create("m", mesh="", type="Mesh")])
    await first.close()

    second = SqlStore(url)
    await second.start()
    try:
        assert await second.get(DP, "default", "web") == updated
        assert await second.get(DP, "default", "gone") is None
        assert (await second.get("Mesh", "", "m")) is not None
        [again] = await second.write([Op(OpKind.UPDATE, DP, "default", "web", spec={}, expected_version=2)])
        assert again is not None and again.version == 3
    finally:
        await second.close()


async def test_sqlite_creates_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "cp.db"
    store = open_store(f"sqlite:{path}")
    await store.start()
    try:
        await store.write([create("web")])
    finally:
        await store.close()
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT type, mesh, name, version FROM resources").fetchall() == [
            (DP, "default", "web", 1)
        ]


async def test_sqlite_connections_have_a_busy_timeout(tmp_path: Path) -> None:
    store = SqlStore(sqlite_url(tmp_path / "cp.db"))
    await store.start()
    try:
        async with store.engine.connect() as conn:
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
        assert timeout >= 5000
    finally:
        await store.close()


@pytest.fixture
async def two_writers(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    url = sqlite_url(tmp_path / "shared.db")
    a, b = SqlStore(url), SqlStore(url)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_stores_on_one_file_stale_writer_conflicts(two_writers: tuple[SqlStore, SqlStore]) -> None:
    a, b = two_writers
    await a.write([create("web", owner="nobody")])
    seen_by_a = await a.get(DP, "default", "web")
    seen_by_b = await b.get(DP, "default", "web")
    assert seen_by_a is not None and seen_by_b is not None and seen_by_b.version == 1

    await a.write(
        [Op(OpKind.UPDATE, DP, "default", "web", spec={"owner": "a"}, expected_version=seen_by_a.version)]
    )
    with pytest.raises(Conflict) as err:
        await b.write(
            [Op(OpKind.UPDATE, DP, "default", "web", spec={"owner": "b"}, expected_version=seen_by_b.version)]
        )
    assert (err.value.expected, err.value.actual) == (1, 2)
    with pytest.raises(AlreadyExists):
        await b.write([create("web")])
    final = await b.get(DP, "default", "web")
    assert final is not None and (final.version, final.spec) == (2, {"owner": "a"})


async def test_two_stores_racing_lose_no_update(two_writers: tuple[SqlStore, SqlStore]) -> None:
    a, b = two_writers
    await a.write([create("counter", n=0)])
    conflicts = 0

    async def increment(store: SqlStore, times: int) -> None:
        nonlocal conflicts
        done = 0
        while done < times:
            current = await store.get(DP, "default", "counter")
            assert current is not None
            await asyncio.sleep(0)  # let the other writer interleave between read and write
            try:
                await store.write(
                    [
                        Op(
                            OpKind.UPDATE,
                            DP,
                            "default",
                            "counter",
                            spec={"n": current.spec["n"] + 1},
                            expected_version=current.version,
                        )
                    ]
                )
            except Conflict:
                conflicts += 1
                continue
            done += 1

    await asyncio.gather(increment(a, 15), increment(b, 15), increment(a, 10), increment(b, 10))
    final = await a.get(DP, "default", "counter")
    assert final is not None
    assert final.spec == {"n": 50}
    assert final.version == 51
    assert conflicts > 0  # the writers did collide, and each collision was caught


async def test_sql_write_cancelled_mid_flight_still_commits_and_publishes(tmp_path: Path) -> None:
    store = SqlStore(sqlite_url(tmp_path / "cp.db"))
    await store.start()
    try:
        async with store.subscribe() as events:
            task = asyncio.create_task(store.write([create("web")]))
            await asyncio.sleep(0)  # started, not finished
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            event = await next_event(events)
        assert (event.kind, event.name) == (EventKind.CREATED, "web")
        assert await store.get(DP, "default", "web") is not None
    finally:
        await store.close()


async def test_sql_store_must_be_started(tmp_path: Path) -> None:
    store = SqlStore(sqlite_url(tmp_path / "cp.db"))
    with pytest.raises(RuntimeError, match="not started"):
        await store.get(DP, "default", "web")
    with pytest.raises(RuntimeError, match="not started"):
        await store.write([create("web")])


async def test_in_memory_sqlite_url_shares_one_database() -> None:
    store = SqlStore("sqlite+aiosqlite://")
    await store.start()
    try:
        await store.write([create("web")])
        results = await asyncio.gather(*(store.get(DP, "default", "web") for _ in range(5)))
        assert all(r is not None for r in results)
    finally:
        await store.close()


# --- open_store --------------------------------------------------------------------------------------------


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory"), MemoryStore)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sqlite:data/cp.db", "data/cp.db"),
        ("sqlite:/var/lib/cp.db", "/var/lib/cp.db"),
        ("sqlite:///data/cp.db", "data/cp.db"),
        ("sqlite:////var/lib/cp.db", "/var/lib/cp.db"),
    ],
)
def test_open_store_sqlite_paths(spec: str, expected: str) -> None:
    store = open_store(spec)
    assert isinstance(store, SqlStore)
    assert store.url.drivername == "sqlite+aiosqlite"
    assert store.url.database == expected


async def test_open_store_sqlite_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    for i, spec in enumerate((f"sqlite:{path}", f"sqlite:///{path}")):
        store = open_store(spec)
        await store.start()
        try:
            await store.write([Op(OpKind.UPSERT, DP, "default", "web", spec={"n": i})])
        finally:
            await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM resources").fetchall() == [(2,)]


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "Memory",
        "memory ",
        "sqlite",
        "sqlite:",
        "sqlite:///",
        "sqlite://host/x.db",
        "postgres://db/x",
        "x",
    ],
)
def test_open_store_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="store"):
        open_store(spec)
