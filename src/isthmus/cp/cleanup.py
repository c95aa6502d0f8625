"""Housekeeping: state kept per data plane stays bounded by the data planes that exist.

A periodic task (wired in :mod:`isthmus.cp.runtime`) does two things:

* removes the Dataplanes whose agent has been gone longer than the cleanup age (``--dataplane-cleanup-age``,
  72h by default as in Kuma; 0 turns it off). "Gone" means no ADS stream open: since its last stream closed,
  or, for a data plane this control plane has not seen since it started, since the later of the start and the
  Dataplane's last modification. The delete names the version read, so a Dataplane registered again meanwhile
  stays. The reconciler then drops its configuration, certificate and cache entry.
* prunes the insights (ADS subscription status) of nodes that are not Dataplanes of the control plane (removed
  ones, or strangers that opened a stream) once they have been offline for the grace period.

A failure of a round is logged and the next round runs as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from isthmus.cp.insights import Insights
from isthmus.store.base import Conflict, NotFound, Op, OpKind, ResourceStore

__all__ = ["DEFAULT_DATAPLANE_CLEANUP_AGE", "CleanupReport", "Housekeeping"]

log = logging.getLogger(__name__)

DEFAULT_DATAPLANE_CLEANUP_AGE = timedelta(hours=72)
DEFAULT_INSIGHT_GRACE = timedelta(minutes=10)
DEFAULT_INTERVAL = timedelta(minutes=1)
PAGE = 500


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CleanupReport:
    removed_dataplanes: list[tuple[str, str]] = field(default_factory=list)  # (mesh, name)
    pruned_insights: list[str] = field(default_factory=list)  # node ids


class Housekeeping:
    """``is_known(node_id)`` tells whether a node id is a Dataplane the control plane serves (its insight is
    kept while the Dataplane exists, however long it is offline)."""

    def __init__(
        self,
        store: ResourceStore,
        insights: Insights,
        is_known: Callable[[str], bool],
        *,
        dataplane_cleanup_age: timedelta = DEFAULT_DATAPLANE_CLEANUP_AGE,
        insight_grace: timedelta = DEFAULT_INSIGHT_GRACE,
        interval: timedelta = DEFAULT_INTERVAL,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.insights = insights
        self.is_known = is_known
        self.cleanup_age = dataplane_cleanup_age
        self.insight_grace = insight_grace
        self.interval = interval
        self.clock = clock
        self.started = clock()

    async def run(self) -> None:
        """Run a round every ``interval`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval.total_seconds())
            await self.run_once()

    async def run_once(self) -> CleanupReport:
        report = CleanupReport()
        try:
            if self.cleanup_age > timedelta(0):
                await self._remove_gone_dataplanes(report)
            report.pruned_insights = self.insights.prune(
                self.clock() - self.insight_grace, keep=self.is_known
            )
        except Exception:  # a round that fails is retried at the next one (CancelledError passes)
            log.exception("housekeeping round failed")
        for mesh, name in report.removed_dataplanes:
            log.info(
                "removed Dataplane %s/%s: its agent has been gone for more than %s",
                mesh,
                name,
                self.cleanup_age,
            )
        return report

    async def _remove_gone_dataplanes(self, report: CleanupReport) -> None:
        now = self.clock()
        gone: list[Op] = []
        offset = 0
        while True:
            page = await self.store.list("Dataplane", offset=offset, limit=PAGE)
            for record in page.items:
                seen = self.insights.last_seen(f"{record.mesh}.{record.name}", now)
                gone_since = max(seen or self.started, record.modification_time)
                if now - gone_since > self.cleanup_age:
                    gone.append(
                        Op(
                            OpKind.DELETE,
                            "Dataplane",
                            record.mesh,
                            record.name,
                            expected_version=record.version,
                        )
                    )
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        for op in gone:  # one by one: a Dataplane registered again meanwhile must not keep the others
            try:
                await self.store.write([op])
            except (NotFound, Conflict):
                continue
            report.removed_dataplanes.append((op.mesh, op.name))
