"""The snapshot cache: the current snapshot of each proxy, and a wake-up for the streams that serve it.

Use it from the event loop thread only: it holds asyncio events, which are not thread-safe. Code running in
another thread hands a snapshot over with ``loop.call_soon_threadsafe(cache.set_snapshot, node_id, snapshot)``.

Each change of a node's snapshot gets a new generation number, taken from one counter for the whole cache, so a
number is never reused for a node, even after :meth:`SnapshotCache.clear`. A stream remembers the generation it
has served and calls :meth:`SnapshotCache.wait_for_change` with it.
"""

from __future__ import annotations

import asyncio
import itertools

from isthmus.xds.snapshot import Snapshot

__all__ = ["SnapshotCache"]


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._generations: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._events: dict[str, asyncio.Event] = {}  # set (and dropped) at the next change of the node
        # streams waiting on the node's event; the event is dropped when the last one stops waiting
        self._waiters: dict[str, int] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` and wake the node's streams. Returns False, and does nothing, when its versions equal
        those of the current snapshot."""
        current = self._snapshots.get(node_id)
        if current is not None and current.versions == snapshot.versions:
            return False
        self._snapshots[node_id] = snapshot
        self._generations[node_id] = next(self._counter)
        event = self._events.pop(node_id, None)
        if event is not None:
            event.set()
        return True

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> None:
        """Forget a proxy (its Dataplane is gone). Its connected streams keep what they sent; Envoy keeps serving
        its last config. Nothing of the node stays in the cache once no stream waits on it."""
        self._snapshots.pop(node_id, None)
        self._generations.pop(node_id, None)
        event = self._events.pop(node_id, None)
        if event is not None:
            event.set()  # waiters see generation 0 and wait again

    def node_ids(self) -> list[str]:
        return sorted(self._snapshots)

    def generation(self, node_id: str) -> int:
        """The generation of the node's current snapshot; 0 when it has none."""
        return self._generations.get(node_id, 0)

    async def wait_for_change(self, node_id: str, seen: int) -> int:
        """Wait until the node's generation differs from ``seen``; returns the new generation."""
        while (current := self.generation(node_id)) == seen:
            event = self._events.get(node_id)
            if event is None:
                event = self._events[node_id] = asyncio.Event()
            self._waiters[node_id] = self._waiters.get(node_id, 0) + 1
            try:
                await event.wait()
            finally:
                left = self._waiters.pop(node_id) - 1
                if left:
                    self._waiters[node_id] = left
                elif self._events.get(node_id) is event:
                    del self._events[node_id]  # nobody waits any more (a stream of a stranger that left)
        return current

    def tracked_nodes(self) -> set[str]:
        """Every node id the cache holds anything for (snapshots, generations, wake-ups)."""
        return self._snapshots.keys() | self._generations.keys() | self._events.keys() | self._waiters.keys()
