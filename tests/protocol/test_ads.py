"""The state-of-the-world ADS rules, against an in-process server and a fake Envoy."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry

from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.server import AdsServer, NullCallbacks
from isthmus.xds.snapshot import Snapshot
from tests.protocol.conftest import (
    NACK_BACKOFF,
    NODE_ID,
    FakeEnvoy,
    Xds,
    cluster,
    endpoints,
    eventually,
    full_snapshot,
    listener,
    resource_names,
    routes,
)

# What an Envoy subscribes to: wildcard CDS/LDS, named EDS/RDS/SDS.
NAMES: dict[str, list[str] | None] = {
    types.CLUSTER: None,
    types.ENDPOINT: ["backend"],
    types.LISTENER: None,
    types.ROUTE: ["local"],
    types.SECRET: ["backend-ca"],
}
EXPECTED = {
    types.CLUSTER: ["backend"],
    types.ENDPOINT: ["backend"],
    types.LISTENER: ["http"],
    types.ROUTE: ["local"],
    types.SECRET: ["backend-ca"],
}


async def subscribe_all(envoy: FakeEnvoy) -> dict[str, discovery_pb2.DiscoveryResponse]:
    return {t: await envoy.subscribe(t, NAMES[t]) for t in types.ORDER}


async def test_first_response_of_each_type(xds: Xds) -> None:
    snapshot = full_snapshot()
    xds.cache.set_snapshot(NODE_ID, snapshot)
    envoy = await xds.connect()
    nonces = set()
    for type_url in types.ORDER:
        await envoy.request(type_url, NAMES[type_url])
        resp = await envoy.recv()
        assert resp.type_url == type_url
        assert resp.version_info == snapshot.version(type_url) != ""
        assert resp.nonce and resp.nonce not in nonces
        assert resource_names(resp) == EXPECTED[type_url]
        assert resp.control_plane.identifier == "isthmus"
        assert list(resp.resources) == [snapshot.get(type_url)[n].packed for n in EXPECTED[type_url]]
        nonces.add(resp.nonce)
        await envoy.ack(resp)
    await eventually(lambda: len(xds.callbacks.of("ack")) == 5, what="5 ACKs")
    await envoy.expect_silence()  # an ACK of the current state is not answered

    [(_, stream_id, node_id, node)] = xds.callbacks.of("open")
    assert (node_id, node.cluster) == (NODE_ID, "web")
    acks = xds.callbacks.of("ack")
    assert [(e[1], e[2], e[3], e[4]) for e in acks] == [
        (stream_id, NODE_ID, t, snapshot.version(t)) for t in types.ORDER
    ]
    sent = xds.callbacks.of("sent")
    assert {e[5] for e in sent} == nonces
    for type_url in types.ORDER:
        assert xds.metric("xds_responses_total", type_url=type_url) == 1
    assert xds.metric("xds_ack_latency_seconds_count") == 5
    assert xds.metric("xds_streams_active") == 1


async def test_snapshot_change_is_pushed_cds_eds_lds_rds_sds(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await subscribe_all(envoy)
    new = full_snapshot(tag="v2", timeout_ms=2000, port=9090, listener_port=10001)
    assert xds.cache.set_snapshot(NODE_ID, new)
    responses = [await envoy.recv() for _ in types.ORDER]
    assert [r.type_url for r in responses] == list(types.ORDER)
    assert [r.version_info for r in responses] == [new.version(t) for t in types.ORDER]
    await envoy.expect_silence()


async def test_only_subscribed_types_are_pushed(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.subscribe(types.LISTENER)
    await envoy.subscribe(types.CLUSTER)
    xds.cache.set_snapshot(NODE_ID, full_snapshot(tag="v2", timeout_ms=2000, port=9090, listener_port=10001))
    assert await envoy.recv_types(2) == [types.CLUSTER, types.LISTENER]
    await envoy.expect_silence()


async def test_hold_requests_until_the_node_has_a_snapshot(xds: Xds) -> None:
    envoy = await xds.connect()
    await envoy.request(types.LISTENER)
    await envoy.request(types.CLUSTER)
    await envoy.expect_silence()
    xds.cache.set_snapshot("someone-else", full_snapshot())
    await envoy.expect_silence(0.1)
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    assert await envoy.recv_types(2) == [types.CLUSTER, types.LISTENER]


async def test_stale_nonce_is_ignored(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    first = await envoy.subscribe(types.CLUSTER)
    xds.cache.set_snapshot(NODE_ID, full_snapshot(timeout_ms=2000))
    second = await envoy.recv()
    assert second.version_info != first.version_info

    # Both would be answered or counted with the latest nonce; with the previous one they are ignored.
    await envoy.request(types.CLUSTER, version="some-old-version", nonce=first.nonce)
    await envoy.request(types.CLUSTER, nonce=first.nonce, error="late NACK")
    await envoy.expect_silence()
    assert xds.callbacks.of("nack") == []
    assert xds.metric("xds_nack_total", type_url=types.CLUSTER) == 0

    await envoy.ack(second)
    await eventually(lambda: xds.callbacks.last_ack() == second.version_info, what="ACK of the push")
    # the control: a lagging version with the latest nonce is answered
    await envoy.request(types.CLUSTER, version="some-old-version", nonce=second.nonce)
    assert (await envoy.recv()).version_info == second.version_info


async def test_nack_is_counted_and_never_answered_with_the_same_version(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    good = await envoy.subscribe(types.CLUSTER)
    await xds.acked(good)
    bad_snapshot = full_snapshot(timeout_ms=2000)
    xds.cache.set_snapshot(NODE_ID, bad_snapshot)
    bad = await envoy.recv()
    await envoy.nack(bad, "bad cluster")
    await eventually(lambda: bool(xds.callbacks.of("nack")), what="on_nack")
    [(_, _, node_id, type_url, rejected, message)] = xds.callbacks.of("nack")
    assert (node_id, type_url, rejected, message) == (NODE_ID, types.CLUSTER, bad.version_info, "bad cluster")
    assert envoy.acked[types.CLUSTER] == good.version_info  # the NACK carried the last good version
    assert xds.metric("xds_nack_total", type_url=types.CLUSTER) == 1
    assert xds.callbacks.last_ack() == good.version_info  # a NACK is not an ACK

    # not resent, neither at once nor when the back-off is over
    await envoy.expect_silence(NACK_BACKOFF * 2)
    # a newer version goes out (the back-off has expired by now)
    fixed = full_snapshot(timeout_ms=3000)
    xds.cache.set_snapshot(NODE_ID, fixed)
    resp = await envoy.recv(timeout=NACK_BACKOFF)
    assert resp.version_info == fixed.version(types.CLUSTER)


async def test_newer_version_after_a_nack_waits_for_the_backoff(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.subscribe(types.CLUSTER)
    xds.cache.set_snapshot(NODE_ID, full_snapshot(timeout_ms=2000))
    bad = await envoy.recv()
    await envoy.nack(bad)
    await eventually(lambda: bool(xds.callbacks.of("nack")), what="on_nack")
    nacked_at = time.monotonic()
    fixed = full_snapshot(timeout_ms=3000)
    xds.cache.set_snapshot(NODE_ID, fixed)
    resp = await envoy.recv()
    assert time.monotonic() - nacked_at >= NACK_BACKOFF * 0.9
    assert resp.version_info == fixed.version(types.CLUSTER)
    await envoy.ack(resp)
    await eventually(lambda: xds.callbacks.last_ack() == resp.version_info, what="ACK of the fix")


async def test_nack_of_one_type_does_not_hold_back_the_others(xds: Xds) -> None:
    xds.server.nack_backoff = 30.0
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await subscribe_all(envoy)
    xds.cache.set_snapshot(NODE_ID, full_snapshot(tag="v2"))  # routes and secret change
    route = await envoy.recv()
    assert route.type_url == types.ROUTE
    await envoy.nack(route)
    await envoy.ack(await envoy.recv())  # the secret
    xds.cache.set_snapshot(NODE_ID, full_snapshot(tag="v2", listener_port=10001))
    assert (await envoy.recv()).type_url == types.LISTENER


async def test_reconnect_with_the_current_version(xds: Xds) -> None:
    snapshot = full_snapshot()
    xds.cache.set_snapshot(NODE_ID, snapshot)
    old = await xds.connect()
    await old.subscribe(types.CLUSTER)
    await old.subscribe(types.ENDPOINT, ["backend"])
    old.close()
    await eventually(lambda: bool(xds.callbacks.of("closed")), what="on_stream_closed")

    envoy = await xds.connect()
    envoy.acked = dict(old.acked)  # a restarted stream reports the versions it has applied
    await envoy.request(types.CLUSTER)
    await envoy.expect_silence()  # it has the full state of this version already
    await envoy.request(types.ENDPOINT, ["backend"])
    resp = await envoy.recv()  # named resources are not known to have reached it on this stream
    assert (resp.version_info, resource_names(resp)) == (snapshot.version(types.ENDPOINT), ["backend"])
    await envoy.ack(resp)
    await envoy.expect_silence()

    new = full_snapshot(timeout_ms=2000)
    xds.cache.set_snapshot(NODE_ID, new)
    assert [(r.type_url, r.version_info) for r in [await envoy.recv(), await envoy.recv()]] == [
        (types.CLUSTER, new.version(types.CLUSTER)),
        (types.ENDPOINT, new.version(types.ENDPOINT)),
    ]
    opened = [e[1] for e in xds.callbacks.of("open")]
    assert len(opened) == len(set(opened)) == 2
    assert xds.callbacks.of("nack") == []


async def test_reconnect_with_an_old_version_gets_the_current_one(xds: Xds) -> None:
    snapshot = full_snapshot()
    xds.cache.set_snapshot(NODE_ID, snapshot)
    envoy = await xds.connect()
    await envoy.request(types.CLUSTER, version="version-from-an-earlier-life")
    assert (await envoy.recv()).version_info == snapshot.version(types.CLUSTER)


async def test_reconnect_after_a_nack_waits_out_the_backoff(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    old = await xds.connect()
    await old.subscribe(types.CLUSTER)
    xds.cache.set_snapshot(NODE_ID, full_snapshot(timeout_ms=2000))
    bad = await old.recv()
    await old.nack(bad)
    await eventually(lambda: bool(xds.callbacks.of("nack")), what="on_nack")
    nacked_at = time.monotonic()
    old.close()

    envoy = await xds.connect()
    envoy.acked = dict(old.acked)  # the last good version
    await envoy.request(types.CLUSTER)
    resp = await envoy.recv()  # one more try, once the back-off is over
    assert time.monotonic() - nacked_at >= NACK_BACKOFF * 0.9
    assert resp.version_info == bad.version_info
    await envoy.nack(resp)
    await envoy.expect_silence(NACK_BACKOFF * 2)  # and no loop on this stream
    assert xds.metric("xds_nack_total", type_url=types.CLUSTER) == 2


async def test_cluster_change_forces_an_eds_push(xds: Xds) -> None:
    before = full_snapshot()
    xds.cache.set_snapshot(NODE_ID, before)
    envoy = await xds.connect()
    await envoy.subscribe(types.CLUSTER)
    eds = await envoy.subscribe(types.ENDPOINT, ["backend"])

    after = full_snapshot(timeout_ms=2000)  # the same endpoints
    assert after.get(types.ENDPOINT)["backend"].digest == before.get(types.ENDPOINT)["backend"].digest
    xds.cache.set_snapshot(NODE_ID, after)
    cds2, eds2 = await envoy.recv(), await envoy.recv()
    assert (cds2.type_url, eds2.type_url) == (types.CLUSTER, types.ENDPOINT)
    assert eds2.version_info == after.version(types.ENDPOINT) != eds.version_info
    assert list(eds2.resources) == list(eds.resources)
    await envoy.ack(cds2)

    # Envoy re-requests EDS with its old version while the changed cluster warms: a lagging version is answered.
    await envoy.request(types.ENDPOINT, version=eds.version_info, nonce=eds2.nonce)
    again = await envoy.recv()
    assert (again.type_url, again.version_info) == (types.ENDPOINT, eds2.version_info)
    await envoy.ack(again)
    await envoy.expect_silence()


async def test_names_requested_before_they_exist_are_sent_when_they_appear(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.request(types.ENDPOINT, ["backend", "later"])
    resp = await envoy.recv()
    assert resource_names(resp) == ["backend"]
    await envoy.ack(resp)
    await envoy.request(types.ROUTE, ["later-routes"])
    await envoy.expect_silence()  # nothing it asked for exists

    grown = Snapshot.build(
        {
            types.CLUSTER: [cluster("backend"), cluster("later")],
            types.ENDPOINT: [endpoints("backend", 8080), endpoints("later", 8081)],
            types.LISTENER: [listener("http", "local")],
            types.ROUTE: [routes("local", body="v1"), routes("later-routes", cluster_name="later")],
        }
    )
    xds.cache.set_snapshot(NODE_ID, grown)
    eds, rds = await envoy.recv(), await envoy.recv()
    assert (eds.type_url, resource_names(eds)) == (types.ENDPOINT, ["backend", "later"])
    assert (rds.type_url, resource_names(rds)) == (types.ROUTE, ["later-routes"])


async def test_a_new_name_in_the_subscription_is_answered(xds: Xds) -> None:
    xds.cache.set_snapshot(
        NODE_ID,
        Snapshot.build({types.ENDPOINT: [endpoints("a", 1), endpoints("b", 2)]}),
    )
    envoy = await xds.connect()
    first = await envoy.subscribe(types.ENDPOINT, ["a"])
    assert resource_names(first) == ["a"]  # EDS carries only the requested names
    await envoy.ack(first, names=["a", "b"])
    second = await envoy.recv()
    assert (second.version_info, resource_names(second)) == (first.version_info, ["a", "b"])
    await envoy.ack(second, names=["b"])  # a shrinking subscription needs no answer
    await envoy.ack(second, names=["a", "b"])  # names it has already, with the same nonce: no answer, no ACK
    await envoy.expect_silence()
    assert [e[4] for e in xds.callbacks.of("ack")] == [first.version_info, second.version_info]
    assert xds.metric("xds_ack_latency_seconds_count") == 2


async def test_cds_and_lds_carry_the_full_state(xds: Xds) -> None:
    xds.cache.set_snapshot(
        NODE_ID, Snapshot.build({types.CLUSTER: [cluster("a"), cluster("b")], types.ENDPOINT: []})
    )
    envoy = await xds.connect()
    assert resource_names(await envoy.subscribe(types.CLUSTER)) == ["a", "b"]
    assert resource_names(await envoy.subscribe(types.LISTENER)) == []  # an empty state is a state too
    xds.cache.set_snapshot(NODE_ID, Snapshot.build({types.CLUSTER: [cluster("b")]}))
    resp = await envoy.recv()
    assert (resp.type_url, resource_names(resp)) == (types.CLUSTER, ["b"])
    await envoy.ack(resp, names=["*"])  # explicit wildcard: the same state, no answer
    await envoy.expect_silence()


async def test_first_request_without_a_node_is_rejected(xds: Xds) -> None:
    envoy = await xds.connect()
    envoy._first = False  # do not attach the node
    await envoy.request(types.CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await envoy.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delta_is_unimplemented(xds: Xds) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        # the server may end the call before the client's first write completes: either one sees the status
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=types.CLUSTER))
            await call.read()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_close_is_reported(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.subscribe(types.CLUSTER)
    assert xds.metric("xds_streams_active") == 1
    envoy.close()
    await eventually(lambda: xds.metric("xds_streams_active") == 0, what="gauge back to 0")
    [(_, stream_id, node_id)] = xds.callbacks.of("closed")
    assert (stream_id, node_id) == (xds.callbacks.of("open")[0][1], NODE_ID)


async def test_a_failing_callback_does_not_break_the_stream() -> None:
    class Broken(NullCallbacks):
        def on_response_sent(self, *args: object) -> None:
            raise RuntimeError("observer bug")

    cache = SnapshotCache()
    server = AdsServer(cache, callbacks=Broken(), metrics=XdsMetrics(CollectorRegistry()))
    port = await server.start("127.0.0.1:0")
    try:
        cache.set_snapshot(NODE_ID, full_snapshot())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            envoy = FakeEnvoy(channel, NODE_ID)
            reader = asyncio.create_task(envoy.read_forever())
            try:
                resp = await envoy.subscribe(types.CLUSTER)
                assert resource_names(resp) == ["backend"]
            finally:
                reader.cancel()
    finally:
        await server.stop(0)


async def test_stop_ends_open_streams_with_status_ok(xds: Xds, caplog: pytest.LogCaptureFixture) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.subscribe(types.CLUSTER)
    assert xds.server.stream_count() == 1
    started = time.monotonic()
    await xds.server.stop(grace=5.0)
    assert time.monotonic() - started < 2.0  # the streams ended by themselves, not at the end of the grace
    with pytest.raises(EOFError):
        await envoy.recv()
    assert await envoy.call.code() == grpc.StatusCode.OK
    assert xds.server.stream_count() == 0 and len(xds.callbacks.of("closed")) == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


async def test_client_closing_its_side_ends_the_stream(xds: Xds) -> None:
    xds.cache.set_snapshot(NODE_ID, full_snapshot())
    envoy = await xds.connect()
    await envoy.subscribe(types.CLUSTER)
    await envoy.call.done_writing()
    with pytest.raises(EOFError):
        await envoy.recv()
    assert await envoy.call.code() == grpc.StatusCode.OK
    await eventually(lambda: xds.metric("xds_streams_active") == 0, what="gauge back to 0")
