"""The ADS server's guards: the authenticator hook runs before anything is served, concurrent streams are
capped, and the NACK records kept across reconnects are bounded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import grpc
import pytest
from prometheus_client import CollectorRegistry

from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.server import AdsServer, Authenticator, StreamDenied
from tests.protocol.conftest import NODE_ID, FakeEnvoy, eventually, full_snapshot

Connect = Callable[..., Awaitable[FakeEnvoy]]


@asynccontextmanager
async def serving(server: AdsServer) -> AsyncIterator[Connect]:
    port = await server.start("127.0.0.1:0")
    channels: list[grpc.aio.Channel] = []
    readers: list[asyncio.Task[None]] = []

    async def connect(node_id: str = NODE_ID, metadata: Sequence[tuple[str, str]] = ()) -> FakeEnvoy:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        envoy = FakeEnvoy(channel, node_id, metadata=metadata)
        readers.append(asyncio.create_task(envoy.read_forever()))
        return envoy

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await server.stop(0)


async def test_authenticator_sees_node_and_metadata_and_refuses_before_serving() -> None:
    seen: list[tuple[str, tuple[tuple[str, str | bytes], ...]]] = []

    async def authenticate(node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        seen.append((node_id, tuple(metadata)))
        token = dict(metadata).get("authorization")
        if token is None:
            raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, "no token")
        if token != f"Bearer {node_id}":
            raise StreamDenied(grpc.StatusCode.PERMISSION_DENIED, "not your node")

    cache = SnapshotCache()
    cache.set_snapshot(NODE_ID, full_snapshot())
    cache.set_snapshot("default.other", full_snapshot(tag="secret-of-other"))
    checker: Authenticator = authenticate
    server = AdsServer(cache, authenticator=checker)
    async with serving(server) as connect:
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer default.web-1"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            stranger = await connect("default.other", metadata)
            await stranger.request(types.SECRET, ["backend-ca"])  # asks for the other node's secret first
            item = await asyncio.wait_for(stranger.received.get(), 5)
            assert isinstance(item, grpc.aio.AioRpcError) and item.code() == code  # no response came first
        assert server.stream_count() == 0
        owner = await connect(NODE_ID, (("authorization", f"Bearer {NODE_ID}"),))
        await owner.subscribe(types.CLUSTER)
        secret = await owner.subscribe(types.SECRET, ["backend-ca"])
        assert secret.resources
    assert seen[0] == ("default.other", tuple(seen[0][1]))
    assert ("authorization", "Bearer default.web-1") in seen[1][1]


async def test_a_failing_authenticator_refuses_with_unavailable() -> None:
    async def broken(node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        raise RuntimeError("store down")

    cache = SnapshotCache()
    cache.set_snapshot(NODE_ID, full_snapshot())
    async with serving(AdsServer(cache, authenticator=broken)) as connect:
        envoy = await connect()
        await envoy.request(types.CLUSTER)
        item = await asyncio.wait_for(envoy.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.UNAVAILABLE


async def test_streams_beyond_the_cap_are_refused() -> None:
    cache = SnapshotCache()
    cache.set_snapshot(NODE_ID, full_snapshot())
    cache.set_snapshot("default.two", full_snapshot())
    registry = CollectorRegistry()
    server = AdsServer(cache, metrics=XdsMetrics(registry), max_streams=1)
    async with serving(server) as connect:
        first = await connect()
        await first.subscribe(types.CLUSTER)
        second = await connect("default.two")
        await second.request(types.CLUSTER)
        item = await asyncio.wait_for(second.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.close()
        await eventually(lambda: server.stream_count() == 0, what="the first stream to close")
        third = await connect("default.two")
        await third.subscribe(types.CLUSTER)  # a slot is free again
        assert registry.get_sample_value("xds_streams_active") in (None, 1.0)


async def test_nack_records_are_bounded() -> None:
    cache = SnapshotCache()
    nodes = [f"default.n{i}" for i in range(4)]
    for node in nodes:
        cache.set_snapshot(node, full_snapshot())
    server = AdsServer(cache, nack_backoff=60.0, max_nack_records=2)
    async with serving(server) as connect:
        for node in nodes:
            envoy = await connect(node)
            await envoy.request(types.CLUSTER)
            await envoy.nack(await envoy.recv())
            await eventually(lambda n=node: n in server._recent_nacks, what=f"the NACK of {node}")  # type: ignore[misc]
            assert server.nack_record_count() <= 2
        assert list(server._recent_nacks) == nodes[-2:]  # the oldest were dropped


async def _allow_own_token(node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
    if dict(metadata).get("authorization") != f"Bearer {node_id}":
        raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, "no valid token")


async def test_idle_unauthenticated_streams_do_not_take_the_slots_of_proxies() -> None:
    """Strangers that open streams and send nothing count against the pending cap, not ``max_streams``: a
    proxy with a valid token still gets its slot; beyond the pending cap strangers are refused."""
    cache = SnapshotCache()
    cache.set_snapshot(NODE_ID, full_snapshot())
    checker: Authenticator = _allow_own_token
    server = AdsServer(cache, authenticator=checker, max_streams=1, max_pending_streams=3, auth_timeout=600)
    async with serving(server) as connect:
        idle = [await connect("default.stranger") for _ in range(3)]  # they never send a request
        await eventually(lambda: server._pending == 3, what="three pending streams")
        fourth = await connect("default.stranger")
        item = await asyncio.wait_for(fourth.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting to be authenticated" in str(item.details())
        for stream in idle:
            stream.close()
        await eventually(lambda: server._pending == 0, what="the idle streams to go")
        idle = [await connect("default.stranger") for _ in range(2)]
        await eventually(lambda: server._pending == 2, what="two pending streams")
        owner = await connect(NODE_ID, (("authorization", f"Bearer {NODE_ID}"),))
        assert (await owner.subscribe(types.CLUSTER)).resources  # max_streams=1 is free for it
        assert server.stream_count() == 1


async def test_a_stream_that_does_not_authenticate_in_time_is_ended() -> None:
    cache = SnapshotCache()
    cache.set_snapshot(NODE_ID, full_snapshot())
    checker: Authenticator = _allow_own_token
    server = AdsServer(cache, authenticator=checker, auth_timeout=0.2)
    async with serving(server) as connect:
        idle = await connect()  # sends nothing
        item = await asyncio.wait_for(idle.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no authenticated first request within 0.2 s" in str(item.details())
        assert server._pending == 0 and server.stream_count() == 0


async def test_over_long_node_ids_are_refused_before_authentication_and_logs_are_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def authenticate(node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        seen.append(node_id)
        raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, "no valid token")

    cache = SnapshotCache()
    checker: Authenticator = authenticate
    async with serving(AdsServer(cache, authenticator=checker)) as connect:
        huge = await connect("default." + "a" * 100_000)
        await huge.request(types.CLUSTER)
        item = await asyncio.wait_for(huge.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 512" in str(item.details()) and len(str(item.details())) < 200
        assert seen == []
        longest = "default." + "b" * (512 - len("default."))  # as long as allowed: authenticated, refused
        caplog.set_level(logging.WARNING, logger="isthmus.xds.server")
        allowed = await connect(longest)
        await allowed.request(types.CLUSTER)
        item = await asyncio.wait_for(allowed.received.get(), 5)
        assert isinstance(item, grpc.aio.AioRpcError) and item.code() == grpc.StatusCode.UNAUTHENTICATED
        assert seen == [longest]
        [record] = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(record.getMessage()) < 250 and "(512 characters)" in record.getMessage()
