"""The KDS stream in one process: a real gRPC server with TLS (the control plane's certificate), real zone
clients, real stores: resources flow both ways, a reconnect resyncs, bad tokens and duplicate zones are
refused."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from isthmus.auth.tokens import TokenService
from isthmus.auth.zone_tokens import issue_zone_token
from isthmus.catalog import default_registry
from isthmus.cp.tls import ensure_server_tls
from isthmus.kds.global_server import KdsServer
from isthmus.kds.protocol import CHANNEL_OPTIONS, FULL_METHOD, decode, encode
from isthmus.kds.sync import global_name
from isthmus.kds.zone_client import ZoneSync
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, ResourceStore

REGISTRY = default_registry()
MESH = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
POLICY = {
    "targetRef": {"kind": "Mesh"},
    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1h"}}],
}
DATAPLANE = {
    "networking": {"address": "127.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "web"}}]}
}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tls = ensure_server_tls(tmp / "global", ["127.0.0.1:0"])
        self.ca = (tmp / "global" / "tls" / "ca.crt").read_bytes()
        self.global_store = open_store("memory")
        self.tokens = TokenService(self.global_store)
        self.server = KdsServer(self.global_store, REGISTRY, self.tokens, instance_id="g1")
        self.port = 0
        self.zones: dict[str, tuple[ResourceStore, ZoneSync, asyncio.Task[None]]] = {}

    async def start(self) -> None:
        await self.global_store.start()
        self.port = await self.server.start("127.0.0.1:0", self.tls.grpc_credentials())

    async def token(self, zone: str) -> Path:
        path = self.tmp / f"{zone}.token"
        path.write_text(await issue_zone_token(self.tokens, zone=zone))
        return path

    async def zone(self, name: str, token_file: Path | None = None) -> tuple[ResourceStore, ZoneSync]:
        store = open_store("memory")
        await store.start()
        sync = ZoneSync(
            store,
            REGISTRY,
            zone=name,
            global_address=f"grpcs://127.0.0.1:{self.port}",
            token_file=token_file or await self.token(name),
            ca_cert=self.ca,
        )
        self.zones[name] = (store, sync, asyncio.create_task(sync.run()))
        return store, sync

    async def stop_zone(self, name: str) -> None:
        store, _, task = self.zones.pop(name)
        task.cancel()
        await asyncio.wait([task])
        await store.close()

    async def close(self) -> None:
        for name in list(self.zones):
            await self.stop_zone(name)
        await self.server.stop(0)
        await self.global_store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    await w.start()
    yield w
    await w.close()


async def test_resources_flow_both_ways(world: World) -> None:
    g = world.global_store
    await g.write(
        [
            Op(OpKind.CREATE, "Mesh", "", "default", spec=MESH),
            Op(OpKind.CREATE, "MeshTimeout", "default", "t1", spec=POLICY),
        ]
    )
    east, _ = await world.zone("east")
    west, _ = await world.zone("west")
    for store in (east, west):
        copy = await eventually(functools.partial(store.get, "MeshTimeout", "default", "t1"), "the policy")
        assert copy.labels["kuma.io/origin"] == "global"
        assert copy.spec == (await g.get("MeshTimeout", "default", "t1")).spec  # type: ignore[union-attr]
        ca_key = ("Secret", "default", "default.ca-builtin-cert-ca-1")
        ca = await eventually(functools.partial(store.get, *ca_key), "the mesh CA in a zone")
        assert ca.spec == (await g.get(*ca_key)).spec  # type: ignore[union-attr]

    # a zone's Dataplane and ZoneIngress reach the global; the ingress (not the Dataplane) the other zone
    await east.write(
        [
            Op(OpKind.CREATE, "Dataplane", "default", "web-1", spec=DATAPLANE),
            Op(
                OpKind.CREATE,
                "ZoneIngress",
                "",
                "zi",
                spec={
                    "networking": {
                        "address": "127.0.0.1",
                        "port": 10001,
                        "advertisedAddress": "10.0.0.1",
                        "advertisedPort": 10001,
                    }
                },
            ),
        ]
    )
    dp_name = global_name("web-1", "default", "east")
    dp = await eventually(lambda: g.get("Dataplane", "default", dp_name), "the Dataplane on the global")
    assert dp.labels == {"kuma.io/origin": "zone", "kuma.io/zone": "east", "kuma.io/display-name": "web-1"}
    zi_name = global_name("zi", "", "east")
    zi = await eventually(lambda: west.get("ZoneIngress", "", zi_name), "east's ZoneIngress in west")
    assert zi.spec["zone"] == "east" and zi.labels["kuma.io/zone"] == "east"
    assert await east.get("ZoneIngress", "", zi_name) is None  # never echoed back
    assert (await west.list("Dataplane")).total == 0

    # deletions travel too
    await g.write([Op(OpKind.DELETE, "MeshTimeout", "default", "t1")])
    await eventually(lambda: _gone(east, "MeshTimeout", "default", "t1"), "the policy removed in east")
    await east.write([Op(OpKind.DELETE, "Dataplane", "default", "web-1")])
    await eventually(lambda: _gone(g, "Dataplane", "default", dp_name), "the Dataplane removed on the global")

    zones = await world.global_store.list("ZoneInsight")
    assert {r.name for r in zones.items} == {"east", "west"}


async def _gone(store: ResourceStore, kind: str, mesh: str, name: str) -> bool:
    return await store.get(kind, mesh, name) is None


async def test_reconnect_resyncs_changes_made_meanwhile(world: World) -> None:
    g = world.global_store
    await g.write([Op(OpKind.CREATE, "Mesh", "", "default", spec={})])
    east, _ = await world.zone("east")
    await eventually(lambda: east.get("Mesh", "", "default"), "the mesh in east")
    # the zone goes away (its store stays), the global changes, the zone comes back with the same store
    store, sync, task = world.zones.pop("east")
    task.cancel()
    await asyncio.wait([task])
    await g.write(
        [
            Op(OpKind.CREATE, "MeshTimeout", "default", "during", spec=POLICY),
            Op(OpKind.UPDATE, "Mesh", "", "default", spec={"skipCreatingInitialPolicies": ["*"]}),
        ]
    )
    world.zones["east"] = (store, sync, asyncio.create_task(sync.run()))
    await eventually(lambda: store.get("MeshTimeout", "default", "during"), "the outage's policy in east")
    mesh = await store.get("Mesh", "", "default")
    assert mesh is not None and mesh.spec == {"skipCreatingInitialPolicies": ["*"]}


async def _open(world: World, token: str, hello_zone: str) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=world.ca)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{world.port}", credentials, options=CHANNEL_OPTIONS)
    call = channel.stream_stream(FULL_METHOD, request_serializer=encode, response_deserializer=decode)(
        metadata=(("authorization", f"Bearer {token}"),)
    )
    await call.write({"hello": {"zone": hello_zone, "have": {}}})
    return channel, call


async def _status(world: World, token: str, zone: str) -> grpc.StatusCode:
    channel, call = await _open(world, token, zone)
    try:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass
        return await call.code()  # type: ignore[no-any-return]
    finally:
        await channel.close()


async def test_bad_tokens_other_zones_and_duplicates_are_refused(world: World) -> None:
    assert await _status(world, "not-a-token", "east") == grpc.StatusCode.UNAUTHENTICATED
    west_token = (await world.token("west")).read_text()
    assert await _status(world, west_token, "east") == grpc.StatusCode.PERMISSION_DENIED
    await world.zone("east")
    await eventually(lambda: _connected(world, "east"), "east connected")
    east_token = (await world.token("east")).read_text()
    assert await _status(world, east_token, "east") == grpc.StatusCode.ALREADY_EXISTS
    await world.stop_zone("east")
    await eventually(lambda: _not_connected(world, "east"), "east's stream closed")


async def _connected(world: World, zone: str) -> bool:
    return zone in world.server.active


async def _not_connected(world: World, zone: str) -> bool:
    return zone not in world.server.active
