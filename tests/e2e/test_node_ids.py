"""A stored mesh whose name has a '.' (written before the rule existed) is not served, and inspecting its
Dataplanes never shows the state of the proxy whose node id they would collide with (mesh ``a`` + Dataplane
``b.c`` and mesh ``a.b`` + Dataplane ``c`` would both be node ``a.b.c``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from isthmus.store import open_store
from isthmus.store.base import Op, OpKind
from tests.e2e.harness import ControlPlane, wait_for

pytestmark = pytest.mark.e2e

MTLS = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dataplane(service: str, port: int) -> dict[str, Any]:
    return {
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": port, "tags": {"kuma.io/service": service}}],
        }
    }


async def _write(db: Path) -> None:
    store = open_store(f"sqlite:{db}")
    await store.start()
    try:
        await store.write(
            [
                Op(OpKind.UPSERT, "Mesh", "", "a", spec=MTLS),
                Op(OpKind.UPSERT, "Dataplane", "a", "b.c", spec=dataplane("web", 21001)),
                Op(OpKind.UPSERT, "Mesh", "", "a.b", spec=MTLS),  # bypasses today's validation
                Op(OpKind.UPSERT, "Dataplane", "a.b", "c", spec=dataplane("intruder", 21002)),
            ]
        )
    finally:
        await store.close()


def test_a_dotted_mesh_never_shows_the_state_of_the_node_it_collides_with(tmp_path: Path) -> None:
    asyncio.run(_write(tmp_path / "cp.db"))
    cp = ControlPlane(tmp_path).start()
    try:
        http = cp.http
        wait_for(
            lambda: http.get("/meshes/a/dataplanes/b.c/_config").json()["xds"], 30, what="config of a/b.c"
        )
        owner = http.get("/meshes/a/dataplanes+insights/b.c").json()
        assert owner["dataplaneInsight"]["mTLS"] is not None  # its certificate was issued
        config = http.get("/meshes/a.b/dataplanes/c/_config").json()
        assert config["xds"] == {} and config["nodeId"] == ""
        assert "contains '.'" in config["error"]
        overview = http.get("/meshes/a.b/dataplanes+insights/c").json()
        assert overview["dataplaneInsight"]["mTLS"] is None
        listed = http.get("/meshes/a.b/dataplanes+insights").json()["items"]
        assert [item["dataplaneInsight"]["mTLS"] for item in listed] == [None]
    finally:
        cp.stop()
        cp.http.close()
