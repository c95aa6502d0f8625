"""Snapshots (versions, packing, consistency) and the snapshot cache."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.snapshot import Snapshot
from tests.protocol.conftest import ca_secret, cluster, endpoints, full_snapshot, listener, routes


def test_versions_are_content_hashes() -> None:
    a, b = full_snapshot(), full_snapshot()
    assert a.versions == b.versions
    assert set(a.versions) == set(types.ORDER) and all(a.versions.values())
    changed = full_snapshot(tag="v2")  # routes and secret only
    for type_url in types.ORDER:
        same = type_url not in (types.ROUTE, types.SECRET)
        assert (a.version(type_url) == changed.version(type_url)) is same, types.short_name(type_url)
    assert a.version("type.googleapis.com/envoy.service.runtime.v3.Runtime") == ""


def test_resources_are_packed_once_with_a_digest() -> None:
    msg = cluster("backend", ca_secret="backend-ca")
    snapshot = Snapshot.build({types.CLUSTER: [msg]})
    res = snapshot.get(types.CLUSTER)["backend"]
    data = msg.SerializeToString(deterministic=True)
    assert (res.name, res.type_url) == ("backend", types.CLUSTER)
    assert res.packed.type_url == types.CLUSTER and res.packed.value == data
    assert res.digest == hashlib.sha256(data).hexdigest()
    assert snapshot.get(types.CLUSTER)["backend"].packed is res.packed
    assert snapshot.names(types.CLUSTER) == {"backend"}
    assert snapshot.names(types.ENDPOINT) == frozenset()


def test_a_cluster_change_changes_the_endpoint_version() -> None:
    a = Snapshot.build({types.CLUSTER: [cluster("c", timeout_ms=1000)], types.ENDPOINT: [endpoints("c", 80)]})
    b = Snapshot.build({types.CLUSTER: [cluster("c", timeout_ms=2000)], types.ENDPOINT: [endpoints("c", 80)]})
    assert a.get(types.ENDPOINT)["c"].digest == b.get(types.ENDPOINT)["c"].digest
    assert a.version(types.ENDPOINT) != b.version(types.ENDPOINT)


def test_duplicate_names_and_wrong_types_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate ClusterLoadAssignment resource 'c'"):
        Snapshot.build({types.ENDPOINT: [endpoints("c", 80), endpoints("c", 81)]})
    with pytest.raises(ValueError, match="cannot be a Listener"):
        Snapshot.build({types.LISTENER: [cluster("c")]})


def test_a_complete_snapshot_is_consistent() -> None:
    assert full_snapshot().consistency_errors() == []


def test_dangling_eds_rds_and_sds_references_are_found() -> None:
    snapshot = Snapshot.build(
        {
            types.CLUSTER: [cluster("backend", ca_secret="backend-ca"), cluster("orphan")],
            types.ENDPOINT: [endpoints("backend", 80)],
            types.LISTENER: [
                listener("http", "missing-routes", cert_secret="server-cert"),
                listener("ok", "r"),
            ],
            types.ROUTE: [routes("r")],
        }
    )
    errors = snapshot.consistency_errors()
    assert len(errors) == 4, errors
    assert any("'orphan'" in e and "ClusterLoadAssignment" in e for e in errors)
    assert any("'http'" in e and "'missing-routes'" in e for e in errors)
    assert any("'backend'" in e and "secret 'backend-ca'" in e for e in errors)
    assert any("'http'" in e and "secret 'server-cert'" in e for e in errors)

    fixed = Snapshot.build(
        {
            types.CLUSTER: [cluster("backend", ca_secret="backend-ca"), cluster("orphan")],
            types.ENDPOINT: [endpoints("backend", 80), endpoints("orphan", 81)],
            types.LISTENER: [listener("http", "r", cert_secret="server-cert"), listener("ok", "r")],
            types.ROUTE: [routes("r")],
            types.SECRET: [ca_secret("backend-ca"), ca_secret("server-cert")],
        }
    )
    assert fixed.consistency_errors() == []


def test_eds_service_name_is_the_reference() -> None:
    c = cluster("web")
    c.eds_cluster_config.service_name = "web-v2"
    snapshot = Snapshot.build({types.CLUSTER: [c], types.ENDPOINT: [endpoints("web", 80)]})
    assert ["'web-v2'" in e for e in snapshot.consistency_errors()] == [True]
    static = cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC)
    assert Snapshot.build({types.CLUSTER: [static]}).consistency_errors() == []


def test_cache_ignores_a_snapshot_with_the_same_versions() -> None:
    cache = SnapshotCache()
    assert cache.generation("n") == 0 and cache.get_snapshot("n") is None
    first = full_snapshot()
    assert cache.set_snapshot("n", first)
    generation = cache.generation("n")
    assert not cache.set_snapshot("n", full_snapshot())
    assert cache.generation("n") == generation and cache.get_snapshot("n") is first
    assert cache.set_snapshot("n", full_snapshot(tag="v2"))
    assert cache.generation("n") > generation
    assert cache.node_ids() == ["n"]
    cache.clear("n")
    assert cache.node_ids() == [] and cache.get_snapshot("n") is None and cache.generation("n") == 0


async def test_cache_wakes_waiters_of_the_changed_node_only() -> None:
    cache = SnapshotCache()
    waiter = asyncio.create_task(cache.wait_for_change("n", 0))
    other = asyncio.create_task(cache.wait_for_change("m", 0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    cache.set_snapshot("n", full_snapshot())
    assert await asyncio.wait_for(waiter, 1) == cache.generation("n")
    await asyncio.sleep(0.01)
    assert not other.done()
    other.cancel()
    # a change made before the wait is not missed
    seen = cache.generation("n")
    cache.set_snapshot("n", full_snapshot(tag="v2"))
    assert await asyncio.wait_for(cache.wait_for_change("n", seen), 1) != seen
