"""The control-plane process: store, generation loop, gRPC ADS and the REST API in one asyncio loop.

Start-up: open the store -> start the ADS server -> start the generation loop and wait for its first full sync
-> serve the REST API. Shutdown (SIGINT/SIGTERM, via uvicorn): stop the API, cancel the generation loop, stop
the ADS server with a grace period (Envoys keep their last config and reconnect to the next instance), close the
store. Nothing is lost: every resource is in the store; certificates are re-issued on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from isthmus.cp.api.app import create_app
from isthmus.cp.certificates import WorkloadCertificates
from isthmus.cp.insights import Insights
from isthmus.cp.reconciler import Reconciler
from isthmus.cp.state import ControlPlaneState
from isthmus.resources.registry import default_registry
from isthmus.store import open_store
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.server import AdsServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpOptions:
    store: str = "sqlite"  # "memory" | "sqlite" (in data_dir) | "sqlite:PATH"
    api_address: str = "127.0.0.1:5681"
    xds_address: str = "127.0.0.1:5678"
    data_dir: Path = Path(".isthmus")
    nack_backoff: float = 5.0
    log_level: str = "info"

    def store_spec(self) -> str:
        if self.store == "sqlite":
            return f"sqlite:{self.data_dir / 'isthmus.db'}"
        return self.store


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


async def run_control_plane(options: CpOptions, ready: asyncio.Event | None = None) -> None:
    api_host, api_port = split_address(options.api_address)
    split_address(options.xds_address)
    store = open_store(options.store_spec())
    await store.start()
    metrics = CollectorRegistry()
    registry = default_registry()
    cache = SnapshotCache()
    insights = Insights()
    certificates = WorkloadCertificates()
    reconciler = Reconciler(store, registry, cache, certificates)
    ads = AdsServer(cache, callbacks=insights, metrics=XdsMetrics(metrics), nack_backoff=options.nack_backoff)
    try:
        xds_port = await ads.start(options.xds_address)
        xds_host = split_address(options.xds_address)[0]
        state = ControlPlaneState(
            store=store,
            registry=registry,
            cache=cache,
            reconciler=reconciler,
            insights=insights,
            certificates=certificates,
            metrics=metrics,
            xds_address=f"{xds_host}:{xds_port}",
            instance_id=uuid.uuid4().hex[:12],
        )
        config = uvicorn.Config(
            create_app(state), host=api_host, port=api_port, log_level=options.log_level, access_log=False
        )
        server = uvicorn.Server(config)
        async with asyncio.TaskGroup() as tg:
            generation = tg.create_task(reconciler.run(), name="reconciler")
            await reconciler.wait_ready()
            log.info("xDS (ADS) on %s, REST API on %s", state.xds_address, options.api_address)
            api = tg.create_task(server.serve(), name="rest-api")
            if ready is not None:
                while not server.started and not api.done():
                    await asyncio.sleep(0.02)
                ready.set()
            await api
            generation.cancel()
    finally:
        await ads.stop(grace=1.0)
        await store.close()
