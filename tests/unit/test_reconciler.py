"""The generation loop on real stores (memory and SQLite): what it regenerates, and that nothing stored breaks it.

Bad records are written straight into the store, bypassing the API's validation, as records stored before a
validation rule existed would be.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from isthmus.catalog import default_registry
from isthmus.cp.certificates import IssuedIdentity, WorkloadCertificates
from isthmus.cp.reconciler import Reconciler
from isthmus.ir.build import node_id, parse_node_id
from isthmus.resources.registry import parse_document
from isthmus.store.base import ChangeEvent, Op, OpKind, ResourceStore
from isthmus.store.memory import MemoryStore
from isthmus.store.sql import SqlStore
from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.node import InvalidNodeId

REGISTRY = default_registry()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s: ResourceStore = (
        MemoryStore() if request.param == "memory" else SqlStore(f"sqlite:///{tmp_path / 'r.db'}")
    )
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def mesh_doc(name: str, mtls: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "Mesh", "name": name}
    if mtls:
        doc["mtls"] = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
    return doc


def dp_doc(
    mesh: str,
    name: str,
    service: str,
    port: int = 8080,
    outbounds: tuple[str, ...] = (),
    address: str = "10.0.0.1",
    **tags: str,
) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {
            "address": address,
            "inbound": [
                {
                    "port": port,
                    "servicePort": 9000,
                    "tags": {"kuma.io/service": service, "kuma.io/protocol": "http", **tags},
                }
            ],
            "outbound": [
                {"port": 10001 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbounds)
            ],
        },
    }


def timeout_doc(mesh: str, name: str, seconds: int, service: str | None = None) -> dict[str, Any]:
    target = {"kind": "MeshService", "name": service} if service else {"kind": "Mesh"}
    return {
        "type": "MeshTimeout",
        "mesh": mesh,
        "name": name,
        "spec": {
            "targetRef": target,
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": f"{seconds}s"}}}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": f"{seconds}s"}}],
        },
    }


async def put(store: ResourceStore, *docs: dict[str, Any]) -> None:
    """Validated writes, as the API does them."""
    ops = []
    for doc in docs:
        res = parse_document(doc, REGISTRY)
        ops.append(
            Op(
                OpKind.UPSERT,
                res.type.kind,
                res.mesh,
                res.name,
                spec=res.spec_dict(),
                labels=dict(res.labels),
            )
        )
    await store.write(ops)


async def put_raw(store: ResourceStore, kind: str, mesh: str, name: str, spec: dict[str, Any]) -> None:
    """A write that bypasses validation: a record stored before today's rules."""
    await store.write([Op(OpKind.UPSERT, kind, mesh, name, spec=spec)])


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of a document: the spec (Mesh and Dataplane: the document without its meta)."""
    if "spec" in doc:
        return dict(doc["spec"])
    return {k: v for k, v in doc.items() if k not in ("type", "mesh", "name")}


def reconciler(store: ResourceStore) -> tuple[Reconciler, CollectorRegistry]:
    metrics = CollectorRegistry()
    return Reconciler(store, REGISTRY, SnapshotCache(), WorkloadCertificates(), metrics=metrics), metrics


def errors_metric(metrics: CollectorRegistry, mesh: str, stage: str) -> float:
    return metrics.get_sample_value("isthmus_generation_errors_total", {"mesh": mesh, "stage": stage}) or 0.0


BAD_TAG_DP = spec_of(dp_doc("m", "x", "web", owner="John Smith"))
BAD_MESH = {
    "mtls": {
        "enabledBackend": "ca-1",
        "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "9000y"}}}],
    }
}


# --- stored records that no longer validate -----------------------------------------------------------------------
async def test_dataplane_with_invalid_tag_is_skipped_and_the_rest_is_served(store: ResourceStore) -> None:
    await put(
        store, mesh_doc("m"), dp_doc("m", "web-1", "web"), dp_doc("m", "api-1", "api", outbounds=("web",))
    )
    await put_raw(store, "Dataplane", "m", "owner", BAD_TAG_DP)
    rec, metrics = reconciler(store)
    await rec.sync_all()

    assert rec.cache.get_snapshot("m.web-1") is not None
    assert rec.cache.get_snapshot("m.api-1") is not None
    assert rec.cache.get_snapshot("m.owner") is None
    error = rec.error_for("m", "owner")
    assert error is not None and error.stage == "load"
    assert "John Smith" in error.message or "tags" in error.message
    assert rec.error_for("m", "web-1") is None
    assert errors_metric(metrics, "m", "load") >= 1
    # deleting the bad record clears its error
    await store.write([Op(OpKind.DELETE, "Dataplane", "m", "owner")])
    await rec.sync_mesh("m")
    assert rec.error_for("m", "owner") is None


async def test_invalid_mesh_is_contained_and_other_meshes_are_served(store: ResourceStore) -> None:
    await put(store, mesh_doc("good"), dp_doc("good", "web-1", "web"))
    await put_raw(store, "Mesh", "", "broken", BAD_MESH)
    await put_raw(store, "Dataplane", "broken", "web-1", spec_of(dp_doc("broken", "web-1", "web")))
    rec, metrics = reconciler(store)
    await rec.sync_all()

    assert rec.cache.get_snapshot("good.web-1") is not None
    assert rec.cache.get_snapshot("broken.web-1") is None
    assert rec.mesh_errors["broken"].stage == "load"
    assert "broken" in rec.mesh_errors["broken"].message
    err = rec.error_for("broken", "web-1")
    assert err is not None and err.stage == "load"
    assert metrics.get_sample_value("isthmus_meshes_in_error") == 1
    assert errors_metric(metrics, "broken", "load") >= 1

    await store.write(
        [Op(OpKind.DELETE, "Dataplane", "broken", "web-1"), Op(OpKind.DELETE, "Mesh", "", "broken")]
    )
    await rec.sync_mesh("broken")
    assert "broken" not in rec.mesh_errors
    assert metrics.get_sample_value("isthmus_meshes_in_error") == 0


async def test_failing_mesh_keeps_its_last_good_config_while_other_meshes_change(
    store: ResourceStore,
) -> None:
    await put(store, mesh_doc("a"), dp_doc("a", "web-1", "web"), mesh_doc("b"), dp_doc("b", "web-1", "web"))
    rec, _ = reconciler(store)
    await rec.sync_all()
    before_a = rec.cache.get_snapshot("a.web-1")
    before_b = rec.cache.get_snapshot("b.web-1")
    assert before_a is not None and before_b is not None

    # a policy stored before today's rules makes mesh a fail as a whole: leaving it out could widen access
    bad = timeout_doc("a", "old", 5)
    bad["spec"]["to"][0]["default"]["http"]["requestTimeout"] = "forever"
    await put_raw(store, "MeshTimeout", "a", "old", spec_of(bad))
    await put(store, timeout_doc("b", "t", 7))
    await rec.sync_all()

    assert rec.mesh_errors["a"].stage == "load"
    assert "MeshTimeout 'old'" in rec.mesh_errors["a"].message
    assert rec.cache.get_snapshot("a.web-1") is before_a  # last good config kept
    after_b = rec.cache.get_snapshot("b.web-1")
    assert after_b is not None and after_b.versions != before_b.versions  # mesh b moved on

    await store.write([Op(OpKind.DELETE, "MeshTimeout", "a", "old")])
    await rec.sync_mesh("a")
    assert "a" not in rec.mesh_errors


async def test_failing_proxy_keeps_its_last_good_snapshot(store: ResourceStore) -> None:
    await put(
        store,
        mesh_doc("m"),
        dp_doc("m", "backend-1", "backend"),
        dp_doc("m", "web-1", "web", outbounds=("backend",)),
        dp_doc("m", "api-1", "api", outbounds=("backend",)),
    )
    rec, metrics = reconciler(store)
    await rec.sync_all()
    web_before = rec.cache.get_snapshot("m.web-1")
    api_before = rec.cache.get_snapshot("m.api-1")
    assert web_before is not None and api_before is not None

    # a JSON patch replacing a field that web's backend cluster lacks cannot apply: only web fails
    patch = {
        "type": "MeshProxyPatch",
        "mesh": "m",
        "name": "break-web",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "default": {
                "appendModifications": [
                    {
                        "cluster": {
                            "operation": "Patch",
                            "match": {"name": "backend"},
                            "jsonPatches": [
                                {"op": "replace", "path": "/loadAssignment/clusterName", "value": "x"}
                            ],
                        }
                    }
                ]
            },
        },
    }
    await put(store, patch, timeout_doc("m", "t", 9))
    await rec.sync_mesh("m")

    assert rec.cache.get_snapshot("m.web-1") is web_before
    state = rec.proxies["m.web-1"]
    assert state.error and state.error_stage == "translate"
    err = rec.error_for("m", "web-1")
    assert err is not None and "/loadAssignment/clusterName does not exist" in err.message
    api_after = rec.cache.get_snapshot("m.api-1")
    assert api_after is not None and api_after.versions != api_before.versions
    assert rec.error_for("m", "api-1") is None
    assert errors_metric(metrics, "m", "translate") == 1
    assert metrics.get_sample_value("isthmus_proxies_in_error", {"mesh": "m"}) == 1

    await store.write([Op(OpKind.DELETE, "MeshProxyPatch", "m", "break-web")])
    await rec.sync_mesh("m")
    assert not rec.proxies["m.web-1"].error
    assert rec.cache.get_snapshot("m.web-1") is not web_before
    assert metrics.get_sample_value("isthmus_proxies_in_error", {"mesh": "m"}) == 0


class RefusingCertificates(WorkloadCertificates):
    """Issuance that fails for one node id, as the certificate code did for a tag value with a space (today
    validation refuses such a tag before it is stored, so no real input reaches this path any more)."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    def identity(self, node_id: str, **kwargs: Any) -> IssuedIdentity:
        if node_id == self.refused:
            raise ValueError("invalid URI SAN: 'kuma://owner/John Smith'")
        return super().identity(node_id, **kwargs)


async def test_certificate_failure_is_contained_to_the_proxy(store: ResourceStore) -> None:
    await put(
        store, mesh_doc("m"), dp_doc("m", "web-1", "web"), dp_doc("m", "web-2", "web", address="10.0.0.2")
    )
    metrics = CollectorRegistry()
    rec = Reconciler(store, REGISTRY, SnapshotCache(), RefusingCertificates("m.web-2"), metrics=metrics)
    await rec.sync_all()
    assert rec.cache.get_snapshot("m.web-2") is None
    assert rec.proxies["m.web-2"].error_stage == "certificate"
    err = rec.error_for("m", "web-2")
    assert err is not None and "John Smith" in err.message
    assert rec.cache.get_snapshot("m.web-1") is not None
    assert errors_metric(metrics, "m", "certificate") == 1


# --- node ids ---------------------------------------------------------------------------------------------------------
def test_node_ids_split_at_the_first_dot() -> None:
    assert node_id("a", "b.c") == "a.b.c"
    assert parse_node_id("a.b.c") == ("a", "b.c")
    with pytest.raises(InvalidNodeId):
        node_id("a.b", "c")
    for bad in ("abc", ".abc", "abc."):
        with pytest.raises(InvalidNodeId):
            parse_node_id(bad)


async def test_stored_dotted_mesh_cannot_take_another_proxys_node_id(store: ResourceStore) -> None:
    await put(store, mesh_doc("a"), dp_doc("a", "b.c", "web"))
    # mesh "a.b" with Dataplane "c" would also be node "a.b.c"; the API refuses such a mesh, a stored one is
    # not served
    await put_raw(store, "Mesh", "", "a.b", {})
    await put_raw(store, "Dataplane", "a.b", "c", spec_of(dp_doc("a.b", "c", "intruder")))
    rec, metrics = reconciler(store)
    await rec.sync_all()

    state = rec.proxies["a.b.c"]
    assert (state.mesh, state.name) == ("a", "b.c")
    snapshot = rec.cache.get_snapshot("a.b.c")
    assert snapshot is not None
    listeners = snapshot.get(types.LISTENER)
    assert any("8080" in name for name in listeners)
    assert state.ir is not None and [i.service for i in state.ir.inbounds] == ["web"]
    assert rec.mesh_errors["a.b"].stage == "node_id"
    assert [p for p in rec.proxies.values() if p.mesh == "a.b"] == []
    assert errors_metric(metrics, "a.b", "node_id") >= 1


# --- what is regenerated ------------------------------------------------------------------------------------------------
async def test_unchanged_write_makes_no_version_and_no_event(store: ResourceStore) -> None:
    await put(store, mesh_doc("m"), dp_doc("m", "web-1", "web"))
    seen: list[ChangeEvent] = []
    async with store.subscribe() as events:

        async def collect() -> None:
            async for ev in events:
                seen.append(ev)

        task = asyncio.create_task(collect())
        await put(store, dp_doc("m", "web-1", "web"))  # unchanged
        await put(store, dp_doc("m", "web-1", "web", port=8081))  # changed
        record = await store.get("Dataplane", "m", "web-1")
        assert record is not None and record.version == 2
        while len(seen) < 1:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(e.name, e.version) for e in seen] == [("web-1", 2)]


async def test_new_instance_regenerates_only_the_proxies_that_reach_its_service(store: ResourceStore) -> None:
    await put(
        store,
        mesh_doc("m"),
        dp_doc("m", "backend-1", "backend"),
        dp_doc("m", "db-1", "db"),
        dp_doc("m", "web-1", "web", outbounds=("backend",)),
        dp_doc("m", "api-1", "api", outbounds=("db",)),
    )
    rec, metrics = reconciler(store)
    await rec.sync_all()
    api = rec.proxies["m.api-1"]
    web_before = rec.cache.get_snapshot("m.web-1")
    assert web_before is not None

    generated = rec.generations
    await put(store, dp_doc("m", "backend-2", "backend", address="10.0.0.2"))
    await rec.sync_mesh("m")
    # backend-2 itself and web-1 (its backend endpoints changed); api-1 and db-1 untouched
    assert rec.generations - generated == 2
    assert rec.proxies["m.api-1"] is api
    web_after = rec.cache.get_snapshot("m.web-1")
    assert web_after is not None
    changed = {t for t in types.ORDER if web_after.version(t) != web_before.version(t)}
    assert changed == {types.ENDPOINT}

    # a policy change regenerates everyone
    generated = rec.generations
    await put(store, timeout_doc("m", "t", 3))
    await rec.sync_mesh("m")
    assert rec.generations - generated == 5
    assert metrics.get_sample_value("isthmus_proxies_generated_total") == rec.generations


# --- the loop -----------------------------------------------------------------------------------------------------------
class FlakyStore(MemoryStore):
    """A memory store whose reads of one mesh fail a given number of times (a database hiccup)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def get(self, type: str, mesh: str, name: str) -> Any:
        if type == "Mesh" and name == "flaky" and self.failures > 0:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return await super().get(type, mesh, name)


async def test_loop_survives_unexpected_errors_and_retries_the_mesh() -> None:
    store = FlakyStore(failures=2)
    await store.start()
    await put(
        store,
        mesh_doc("flaky"),
        dp_doc("flaky", "web-1", "web"),
        mesh_doc("fine"),
        dp_doc("fine", "web-1", "web"),
    )
    rec, metrics = reconciler(store)
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.wait_ready(), 30)
        assert rec.cache.get_snapshot("fine.web-1") is not None
        assert rec.mesh_errors["flaky"].stage == "sync"
        assert errors_metric(metrics, "flaky", "sync") >= 1
        # retried after a back-off, without any event, until it works
        while rec.cache.get_snapshot("flaky.web-1") is None:
            assert not task.done()
            await asyncio.sleep(0.05)
        assert "flaky" not in rec.mesh_errors
        # and it keeps following changes
        await put(store, dp_doc("fine", "web-2", "web"))
        while rec.cache.get_snapshot("fine.web-2") is None:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    assert task.cancelled()  # CancelledError is never swallowed


async def until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.02)


async def test_loop_reads_again_only_what_events_name_and_follows_every_change(store: ResourceStore) -> None:
    await put(
        store, mesh_doc("m"), dp_doc("m", "web-1", "web"), dp_doc("m", "api-1", "api", outbounds=("web",))
    )
    rec, _ = reconciler(store)
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.wait_ready(), 30)
        api = rec.cache.get_snapshot("m.api-1")
        assert api is not None
        await put(store, dp_doc("m", "web-2", "web", address="10.0.0.2"))
        await until(lambda: rec.cache.get_snapshot("m.web-2") is not None)
        await until(lambda: rec.cache.get_snapshot("m.api-1") is not api)  # a new endpoint of web
        await put_raw(store, "Dataplane", "m", "owner", BAD_TAG_DP)
        await until(lambda: ("Dataplane", "m", "owner") in rec.record_errors)
        await store.write(
            [Op(OpKind.DELETE, "Dataplane", "m", "web-2"), Op(OpKind.DELETE, "Dataplane", "m", "owner")]
        )
        await until(lambda: "m.web-2" not in rec.proxies and not rec.record_errors)
        assert rec.cache.get_snapshot("m.web-2") is None
        before = rec.cache.get_snapshot("m.web-1")
        await put(store, timeout_doc("m", "t", 4))
        await until(lambda: rec.cache.get_snapshot("m.web-1") is not before)
        assert set(rec.proxies) == {"m.web-1", "m.api-1"}
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_restart_on_a_store_with_bad_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    first = SqlStore(url)
    await first.start()
    await put(first, mesh_doc("good"), dp_doc("good", "web-1", "web"))
    await put_raw(first, "Mesh", "", "broken", BAD_MESH)
    await put_raw(first, "Dataplane", "good", "owner", BAD_TAG_DP)
    await first.close()

    second = SqlStore(url)
    await second.start()
    rec, _ = reconciler(second)
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.wait_ready(), 30)
        assert rec.cache.get_snapshot("good.web-1") is not None
        assert set(rec.mesh_errors) == {"broken"}
        assert ("Dataplane", "good", "owner") in rec.record_errors
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await second.close()


async def test_dataplane_spec_is_the_stored_spec_the_loop_generates_from(store: ResourceStore) -> None:
    """What ADS stream authentication checks tokens against: the stored Dataplane as the loop last read it."""
    await put(store, mesh_doc("m"), dp_doc("m", "web-1", "web"))
    rec, _ = reconciler(store)
    assert rec.dataplane_spec("m", "web-1") is None  # nothing read yet
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.wait_ready(), 30)
        stored = await store.get("Dataplane", "m", "web-1")
        assert stored is not None and rec.dataplane_spec("m", "web-1") == stored.spec
        await put(store, dp_doc("m", "web-1", "web", version="v2"))
        await until(lambda: (rec.dataplane_spec("m", "web-1") or {}) != stored.spec)
        spec = rec.dataplane_spec("m", "web-1")
        assert spec is not None and spec["networking"]["inbound"][0]["tags"]["version"] == "v2"
        await store.write([Op(OpKind.DELETE, "Dataplane", "m", "web-1")])
        await until(lambda: rec.dataplane_spec("m", "web-1") is None)
        assert rec.dataplane_spec("other", "web-1") is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
