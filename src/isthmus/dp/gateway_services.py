"""What a gateway agent runs next to its Envoy: the rate-limit service of Kong's ``policy: redis``
(:mod:`isthmus.gateway.ratelimit_service`), on a free loopback port named in the bootstrap as a static cluster,
for as long as the Envoy runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from isthmus.gateway.ratelimit_service.server import Running, cluster, serving

__all__ = ["Running", "ServiceStopped", "beside", "rate_limit_service"]


@contextlib.asynccontextmanager
async def rate_limit_service(enabled: bool, bootstrap: dict[str, Any]) -> AsyncIterator[Running | None]:
    """The service (None when not ``enabled``), its cluster added to ``bootstrap``'s static clusters."""
    if not enabled:
        yield None
        return
    async with serving("127.0.0.1", 0) as service:
        bootstrap.setdefault("static_resources", {}).setdefault("clusters", []).append(
            cluster(service.host, service.port)
        )
        yield service


class ServiceStopped(Exception):
    """The rate-limit service ended while its Envoy was running."""


async def beside(main: Coroutine[Any, Any, None], service: Running | None) -> None:
    """Run ``main`` (the Envoy's supervision); the service stopping first raises :class:`ServiceStopped`.
    Cancelling this cancels both and waits for them."""
    if service is None:
        await main
        return
    main_task = asyncio.ensure_future(main)
    service_task = asyncio.ensure_future(service.wait())
    try:
        await asyncio.wait({main_task, service_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (main_task, service_task):
            task.cancel()
        await asyncio.wait({main_task, service_task})
    if not main_task.cancelled() and main_task.done():
        main_task.result()  # Envoy's failure, if any
        return
    raise ServiceStopped("the rate-limit service stopped")
