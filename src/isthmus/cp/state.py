"""What the REST API needs from a running control plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from isthmus.auth import Auth
from isthmus.cp.certificates import WorkloadCertificates
from isthmus.cp.insights import Insights
from isthmus.cp.reconciler import Reconciler
from isthmus.resources.registry import Registry
from isthmus.store.base import ResourceStore
from isthmus.xds.cache import SnapshotCache

if TYPE_CHECKING:
    from isthmus.cp.stats_scraper import StatsScraper
    from isthmus.gateway.store import GatewayStore
    from isthmus.kds.ownership import WriteGuard


@dataclass
class ControlPlaneState:
    store: ResourceStore
    registry: Registry
    cache: SnapshotCache
    reconciler: Reconciler
    insights: Insights
    certificates: WorkloadCertificates
    metrics: CollectorRegistry
    xds_address: str = ""
    instance_id: str = field(default="")
    max_body_bytes: int = 1 << 20  # REST request bodies larger than this are answered 413
    auth: Auth = field(kw_only=True)  # tokens, --dp-auth and --api-localhost-is-admin
    # multi-zone (isthmus.kds): which writes this control plane refuses (zone copies are read-only); None:
    # standalone, every write allowed
    write_guard: WriteGuard | None = field(default=None, kw_only=True)
    mode: str = field(default="standalone", kw_only=True)  # standalone | global | zone
    # the web UI's views (cp/api/ui_data.py): the Admin API's GatewayStore, and the data planes' stats
    gateway_store: GatewayStore | None = field(default=None, kw_only=True)
    stats: StatsScraper | None = field(default=None, kw_only=True)
