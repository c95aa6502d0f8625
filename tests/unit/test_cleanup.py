"""Bounded state: departed proxies' insights pruned, long-gone Dataplanes removed, cache entries dropped."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from isthmus.cp.cleanup import Housekeeping
from isthmus.cp.insights import Insights
from isthmus.store.memory import MemoryStore
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.snapshot import Snapshot
from tests.unit.test_reconciler import dp_doc, mesh_doc, put, reconciler


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_insights_of_departed_strangers_are_pruned_after_the_grace_period() -> None:
    insights = Insights()
    insights.on_stream_open(1, "m.stranger", None)
    insights.on_stream_closed(1, "m.stranger")
    insights.on_stream_open(2, "m.web-1", None)
    insights.on_stream_closed(2, "m.web-1")
    insights.on_stream_open(3, "m.online", None)
    left = datetime.now(UTC)

    assert insights.prune(left - timedelta(minutes=1)) == []  # within the grace period: kept
    pruned = insights.prune(left + timedelta(seconds=1), keep=lambda nid: nid == "m.web-1")
    assert pruned == ["m.stranger"]
    assert set(insights.nodes) == {"m.web-1", "m.online"}  # an existing Dataplane and an open stream stay
    assert insights.prune(left + timedelta(days=365)) == ["m.web-1"]
    assert set(insights.nodes) == {"m.online"}


async def test_dataplanes_gone_longer_than_the_cleanup_age_are_removed() -> None:
    store = MemoryStore()
    await store.start()
    await put(
        store,
        mesh_doc("m"),
        dp_doc("m", "online", "web"),
        dp_doc("m", "left", "web"),
        dp_doc("m", "never-seen", "web"),
    )
    rec, _ = reconciler(store)
    await rec.sync_all()
    insights = Insights()
    insights.on_stream_open(1, "m.online", None)
    insights.on_stream_open(2, "m.left", None)
    insights.on_stream_closed(2, "m.left")
    clock = Clock()
    housekeeping = Housekeeping(
        store, insights, rec.proxies.__contains__, dataplane_cleanup_age=timedelta(hours=1), clock=clock
    )

    clock.now += timedelta(minutes=59)
    assert (await housekeeping.run_once()).removed_dataplanes == []
    clock.now += timedelta(minutes=2)
    report = await housekeeping.run_once()
    assert sorted(report.removed_dataplanes) == [("m", "left"), ("m", "never-seen")]
    assert [r.name for r in (await store.list("Dataplane", "m")).items] == ["online"]

    # the reconciler forgets them: no snapshot, no certificate, nothing in the cache
    await rec.sync_mesh("m")
    for nid in ("m.left", "m.never-seen"):
        assert nid not in rec.proxies
        assert rec.certificates.get(nid) is None
        assert nid not in rec.cache.tracked_nodes()
    # and their insights go once the grace period is over
    clock.now += timedelta(hours=1)
    assert (await housekeeping.run_once()).pruned_insights == ["m.left"]
    await store.close()


async def test_cleanup_age_zero_keeps_every_dataplane() -> None:
    store = MemoryStore()
    await store.start()
    await put(store, mesh_doc("m"), dp_doc("m", "web-1", "web"))
    clock = Clock()
    housekeeping = Housekeeping(
        store, Insights(), lambda _: True, dataplane_cleanup_age=timedelta(0), clock=clock
    )
    clock.now += timedelta(days=3650)
    assert (await housekeeping.run_once()).removed_dataplanes == []
    assert (await store.get("Dataplane", "m", "web-1")) is not None


async def test_periodic_task_removes_a_gone_dataplane() -> None:
    store = MemoryStore()
    await store.start()
    await put(store, mesh_doc("m"), dp_doc("m", "web-1", "web"))
    housekeeping = Housekeeping(
        store,
        Insights(),
        lambda _: False,
        dataplane_cleanup_age=timedelta(milliseconds=200),
        interval=timedelta(milliseconds=50),
    )
    task = asyncio.create_task(housekeeping.run())
    try:
        while await store.get("Dataplane", "m", "web-1") is not None:
            assert not task.done()
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_cache_keeps_nothing_of_a_node_nobody_waits_for() -> None:
    cache = SnapshotCache()
    waiter = asyncio.create_task(cache.wait_for_change("m.stranger", 0))
    await asyncio.sleep(0)
    assert "m.stranger" in cache.tracked_nodes()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert cache.tracked_nodes() == set()

    cache.set_snapshot("m.web-1", Snapshot.of_resources({}))
    waiter = asyncio.create_task(cache.wait_for_change("m.web-1", cache.generation("m.web-1")))
    await asyncio.sleep(0)
    cache.clear("m.web-1")  # the Dataplane was deleted: its stream is woken
    assert await waiter == 0
    assert cache.tracked_nodes() == set()
