"""The FastAPI application of the control plane."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isthmus import __version__
from isthmus.cp.api import auth, errors, gui, inspect, resources, tokens, ui_data
from isthmus.cp.api.limits import BodyLimitMiddleware
from isthmus.cp.api.models import Index, ResourceTypes
from isthmus.cp.api.openapi import ControlPlaneApi
from isthmus.cp.state import ControlPlaneState
from isthmus.egress import api as zone_proxies_api
from isthmus.kds import api as kds_api


def create_app(state: ControlPlaneState) -> FastAPI:
    app = ControlPlaneApi(
        title="Isthmus control plane",
        version=__version__,
        description="Resources in Kuma's Universal format on Kuma's REST paths.",
    )
    errors.install(app)

    @app.get("/", tags=["system"], response_model=None, responses={200: {"model": Index}})
    async def index() -> dict[str, Any]:
        return {
            "product": "Isthmus",
            "version": __version__,
            "instanceId": state.instance_id,
            "xdsAddress": state.xds_address,
        }

    @app.get("/_resources", tags=["system"], response_model=None, responses={200: {"model": ResourceTypes}})
    async def resource_types() -> dict[str, Any]:
        return {
            "resources": [
                {
                    "name": t.kind,
                    "path": t.plural,
                    "scope": t.scope.value,
                    "policy": t.is_policy,
                }
                for t in state.registry.public()
            ]
        }

    @app.get(
        "/metrics",
        tags=["system"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)

    app.include_router(inspect.build_router(state))
    app.include_router(ui_data.build_router(state))  # the web UI's views, before /meshes/{mesh}/{plural}
    app.include_router(gui.build_router())  # the web UI's files at /gui
    # fixed paths before resources' /{plural}/{name} (global kinds), which would otherwise match them first
    app.include_router(kds_api.build_router(state))  # /tokens/zone, /zones+insights
    app.include_router(
        zone_proxies_api.build_router(state)
    )  # /zoneingresses+insights, /zoneegresses/{n}/_config
    app.include_router(tokens.build_router(state))
    app.include_router(resources.build_router(state))
    auth.install(app, state.auth, state.store)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=state.max_body_bytes)
    return app
