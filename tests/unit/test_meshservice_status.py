"""MeshService ``status.dataplaneProxies`` and ``status.tls`` (Kuma's status updater): which Dataplanes a
MeshService selects, connected / healthy / total, the TLS readiness rule, and the names loop writing them (no
write when nothing changed, a user's write in between wins, the light pass after a connection change)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from isthmus.catalog import default_registry
from isthmus.cp.certificates import WorkloadCertificates
from isthmus.cp.insights import Insights
from isthmus.kds.sync import Changes
from isthmus.kds.zone_client import ZoneSync
from isthmus.names.controller import NamesController
from isthmus.names.proxy_status import DataplaneIndex, LiveProxies, Member, members, proxy_fields
from isthmus.pki.ca import generate_ca
from isthmus.resources.meshservice import MeshServiceDocument
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, ResourceStore
from isthmus.xds import types

REG = default_registry()
ONE_DAY = timedelta(days=1)


class Facts:
    """:class:`~isthmus.names.proxy_status.ProxyFacts` given by the test."""

    def __init__(self, connected: Iterable[str] = (), certified: Iterable[str] = ()) -> None:
        self.online = set(connected)
        self.certs = set(certified)

    def connected(self, mesh: str, name: str) -> bool:
        return name in self.online

    def certified(self, mesh: str, name: str) -> bool:
        return name in self.certs


def dataplane(name: str, *inbounds: dict[str, Any], labels: dict[str, str] | None = None) -> Resource:
    doc: dict[str, Any] = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": "10.0.0.1", "inbound": list(inbounds)},
    }
    if not inbounds:  # a gateway: no inbound
        doc["networking"]["gateway"] = {"tags": {"kuma.io/service": name}}
    if labels:
        doc["labels"] = labels
    return parse_document(doc, REG)


def inbound(port: int, service: str = "api", name: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "port": port,
        "tags": {"kuma.io/service": service, **extra.pop("tags", {})},
        **extra,
    }
    if name:
        out["name"] = name
    return out


def meshservice(selector: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> MeshServiceDocument:
    doc = {
        "type": "MeshService",
        "mesh": "default",
        "name": "api",
        "spec": {
            "selector": selector,
            "ports": ports if ports is not None else [{"port": 80, "targetPort": 8080}],
        },
    }
    spec = parse_document(doc, REG).spec
    assert isinstance(spec, MeshServiceDocument)
    return spec


def names(selected: tuple[Member, ...]) -> list[str]:
    return [m.name for m in selected]


# -- selection ---------------------------------------------------------------------------------------------------
def test_selection_by_tags_counts_each_dataplane_once() -> None:
    index = DataplaneIndex(
        [
            dataplane("api-1", inbound(8080), inbound(9090, tags={"extra": "x"})),  # two inbounds of api
            dataplane("api-2", inbound(8080, tags={"version": "v2"})),
            dataplane("web-1", inbound(8080, "web")),
            dataplane("api-ignored", inbound(8080, state="Ignored")),  # an ignored inbound selects nothing
            dataplane("gateway-only"),  # no inbound: never selected
        ]
    )
    assert names(members(meshservice({"dataplaneTags": {"kuma.io/service": "api"}}), index)) == [
        "api-1",
        "api-2",
    ]
    both = {"kuma.io/service": "api", "version": "v2"}
    assert names(members(meshservice({"dataplaneTags": both}), index)) == ["api-2"]
    assert names(members(meshservice({"dataplaneTags": {"kuma.io/service": "db"}}), index)) == []


def test_selection_by_dataplane_ref_and_by_labels() -> None:
    index = DataplaneIndex(
        [
            dataplane("api-1", inbound(8080), labels={"app": "api", "tier": "a"}),
            dataplane("api-2", inbound(8080), labels={"app": "api", "tier": "b"}),
            dataplane("gateway-only", labels={"app": "api"}),  # no inbound: never selected
        ]
    )
    assert names(members(meshservice({"dataplaneRef": {"name": "api-2"}}), index)) == ["api-2"]
    assert names(members(meshservice({"dataplaneRef": {"name": "gateway-only"}}), index)) == []
    assert names(members(meshservice({"dataplaneRef": {"name": "missing"}}), index)) == []
    by_labels = meshservice({"dataplaneLabels": {"matchLabels": {"app": "api"}}})
    assert names(members(by_labels, index)) == ["api-1", "api-2"]
    tier = meshservice({"dataplaneLabels": {"matchLabels": {"app": "api", "tier": "b"}}})
    assert names(members(tier, index)) == ["api-2"]
    assert names(members(meshservice({}), index)) == []  # no selector selects nothing


# -- counts ------------------------------------------------------------------------------------------------------
def test_connected_and_total() -> None:
    index = DataplaneIndex([dataplane(f"api-{i}", inbound(8080)) for i in range(1, 4)])
    selected = members(meshservice({"dataplaneTags": {"kuma.io/service": "api"}}), index)
    fields = proxy_fields(
        "default", selected, Facts(connected={"api-1", "api-3", "web-1"}), mtls=False, status={}
    )
    assert fields["dataplaneProxies"] == {"connected": 2, "healthy": 3, "total": 3}


def test_healthy_needs_a_ready_inbound_on_every_port() -> None:
    ports: list[dict[str, Any]] = [{"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": "admin"}]
    index = DataplaneIndex(
        [
            dataplane("both-ready", inbound(8080), inbound(9000, name="admin")),
            dataplane("admin-not-ready", inbound(8080), inbound(9000, name="admin", state="NotReady")),
            dataplane(
                "main-probe-failed", inbound(8080, health={"ready": False}), inbound(9000, name="admin")
            ),
            dataplane("no-admin-port", inbound(8080)),
        ]
    )
    ms = meshservice({"dataplaneTags": {"kuma.io/service": "api"}}, ports)
    selected = members(ms, index)
    assert [(m.name, m.healthy) for m in selected] == [
        ("admin-not-ready", False),
        ("both-ready", True),
        ("main-probe-failed", False),
        ("no-admin-port", False),
    ]
    counts = proxy_fields("default", selected, Facts(), mtls=False, status={})["dataplaneProxies"]
    assert counts == {"connected": 0, "healthy": 1, "total": 4}
    # a MeshService without ports: every selected Dataplane counts as healthy (Kuma's rule)
    no_ports = members(meshservice({"dataplaneTags": {"kuma.io/service": "api"}}, []), index)
    assert sum(m.healthy for m in no_ports) == 4


# -- tls ---------------------------------------------------------------------------------------------------------
def test_tls_ready_only_with_mtls_and_every_certificate() -> None:
    selected = (Member("api-1", True), Member("api-2", True))
    both = Facts(certified={"api-1", "api-2"})
    one = Facts(certified={"api-1"})
    assert proxy_fields("default", selected, both, mtls=False, status={})["tls"] == {"status": "NotReady"}
    assert proxy_fields("default", selected, both, mtls=True, status={})["tls"] == {"status": "Ready"}
    assert proxy_fields("default", selected, one, mtls=True, status={})["tls"] == {"status": "NotReady"}
    # once Ready it stays Ready while mTLS is on: a new instance's first moments without a certificate
    ready = {"tls": {"status": "Ready"}}
    assert proxy_fields("default", selected, one, mtls=True, status=ready)["tls"] == {"status": "Ready"}
    assert proxy_fields("default", selected, one, mtls=False, status=ready)["tls"] == {"status": "NotReady"}
    assert proxy_fields("default", (), Facts(), mtls=True, status={})["tls"] == {"status": "Ready"}


def test_live_proxies_read_streams_and_acked_certificates() -> None:
    insights = Insights()
    certificates = WorkloadCertificates()
    seen: list[str] = []
    insights.listeners.append(seen.append)
    live = LiveProxies(insights, certificates)
    assert not live.connected("default", "api-1")
    insights.on_stream_open(1, "default.api-1", None)
    insights.on_stream_open(2, "default.api-1", None)  # a second stream: no change
    assert live.connected("default", "api-1") and seen == ["default.api-1"]
    assert not live.certified("default", "api-1")  # no certificate issued
    ca = generate_ca("default", backend="ca-1")
    certificates.identity(
        "default.api-1", ca=ca, mesh="default", services=("api",), tags={}, lifetime=ONE_DAY
    )
    assert not live.certified("default", "api-1")  # issued, not yet received
    insights.on_ack(2, "default.api-1", types.SECRET, "v1")
    insights.on_ack(2, "default.api-1", types.SECRET, "v1")  # the same version again: no change
    assert live.certified("default", "api-1") and seen == ["default.api-1"] * 2
    insights.on_stream_closed(1, "default.api-1")
    assert live.connected("default", "api-1") and len(seen) == 2
    insights.on_stream_closed(2, "default.api-1")
    assert not live.connected("default", "api-1") and len(seen) == 3


# -- the names loop ----------------------------------------------------------------------------------------------
@pytest.fixture
async def store() -> AsyncIterator[ResourceStore]:
    s = open_store("memory")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def _apply(store: ResourceStore, text: str) -> None:
    for doc in load_documents(text):
        res = parse_document(doc, REG)
        await store.write(
            [Op(OpKind.UPSERT, res.type.kind, res.mesh, res.name, res.spec_dict(), dict(res.labels))]
        )


SETUP = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: MeshService
mesh: default
name: api
spec:
  selector: {dataplaneTags: {kuma.io/service: api}}
  ports: [{port: 80, targetPort: 8080}]
---
type: Dataplane
mesh: default
name: api-1
networking: {address: 10.0.0.1, inbound: [{port: 8080, tags: {kuma.io/service: api}}]}
---
type: Dataplane
mesh: default
name: api-2
networking: {address: 10.0.0.2, inbound: [{port: 8080, tags: {kuma.io/service: api}, state: NotReady}]}
"""


async def _status(store: ResourceStore) -> tuple[int, dict[str, Any]]:
    record = await store.get("MeshService", "default", "api")
    assert record is not None
    return record.version, record.spec.get("status", {})


async def test_the_loop_writes_the_status_once_and_follows_connections(store: ResourceStore) -> None:
    await _apply(store, SETUP)
    facts = Facts(connected={"api-1"}, certified={"api-1"})
    controller = NamesController(store, REG, proxies=facts)
    await controller.sync()
    version, status = await _status(store)
    assert status["dataplaneProxies"] == {"connected": 1, "healthy": 1, "total": 2}
    assert status["tls"] == {"status": "NotReady"}  # api-2 holds no certificate yet
    assert status["vips"]  # the other status fields are still written

    await controller.sync()  # nothing changed: nothing written (no new version, no store event)
    assert (await _status(store))[0] == version

    # api-2 connects and gets its certificate: no store event, the ADS insights call proxy_changed
    facts.online.add("api-2")
    facts.certs.add("api-2")
    controller.proxy_changed("default.api-2")
    controller.proxy_changed("not-a-node-id")  # ignored
    await controller.sync_proxies()
    version, status = await _status(store)
    assert status["dataplaneProxies"] == {"connected": 2, "healthy": 1, "total": 2}
    assert status["tls"] == {"status": "Ready"}
    await controller.sync_proxies()  # nothing dirty: nothing written
    assert (await _status(store))[0] == version

    # a data plane no MeshService selects changes nothing
    controller.proxy_changed("default.web-1")
    await controller.sync_proxies()
    assert (await _status(store))[0] == version

    # api-1 disconnects; a user writes the MeshService in between: the user's write wins, the full pass that
    # its store event starts counts again
    facts.online.discard("api-1")
    controller.proxy_changed("default.api-1")
    await _apply(store, SETUP.split("---")[1].replace("port: 80,", "port: 81,"))
    await controller.sync_proxies()
    record = await store.get("MeshService", "default", "api")
    assert record is not None and record.spec["spec"]["ports"][0]["port"] == 81
    assert "status" not in record.spec  # the user's document had none; the light pass left it alone
    await controller.sync()
    _, status = await _status(store)
    assert record.spec["spec"]["ports"][0]["targetPort"] == 8080
    assert status["dataplaneProxies"] == {"connected": 1, "healthy": 1, "total": 2}


async def test_inbound_health_and_mesh_mtls_changes_reach_the_status(store: ResourceStore) -> None:
    await _apply(store, SETUP)
    facts = Facts(connected={"api-1", "api-2"}, certified={"api-1", "api-2"})
    controller = NamesController(store, REG, proxies=facts)
    await controller.sync()
    _, status = await _status(store)
    assert status["dataplaneProxies"] == {"connected": 2, "healthy": 1, "total": 2}
    assert status["tls"] == {"status": "Ready"}
    # api-2's probe passes (HDS writes the Dataplane), api-1 is removed
    await _apply(store, SETUP.split("---")[3].replace("state: NotReady", "state: Ready"))
    await store.write([Op(OpKind.DELETE, "Dataplane", "default", "api-1")])
    await controller.sync()
    _, status = await _status(store)
    assert status["dataplaneProxies"] == {"connected": 1, "healthy": 1, "total": 1}
    # mTLS off: NotReady
    await _apply(store, "type: Mesh\nname: default\n")
    await controller.sync()
    assert (await _status(store))[1]["tls"] == {"status": "NotReady"}


async def test_other_zones_copies_and_a_global_are_not_counted(store: ResourceStore) -> None:
    await _apply(store, SETUP)
    copy = await store.get("MeshService", "default", "api")
    assert copy is not None
    labels = {"kuma.io/origin": "global", "kuma.io/zone": "east", "kuma.io/display-name": "api"}
    await store.write([Op(OpKind.UPDATE, "MeshService", "default", "api", copy.spec, labels)])
    await NamesController(store, REG, mode="zone", zone="west", proxies=Facts({"api-1"})).sync()
    _, status = await _status(store)
    assert "dataplaneProxies" not in status and "tls" not in status and status["vips"]
    await store.write([Op(OpKind.UPDATE, "MeshService", "default", "api", copy.spec, {})])
    await NamesController(store, REG, mode="global").sync()
    _, status = await _status(store)
    assert "dataplaneProxies" not in status and "tls" not in status


def test_counts_leave_the_resource_digest_alone() -> None:
    """No proxy's configuration depends on the counts: a change of them must not regenerate the mesh."""
    base = {"type": "MeshService", "mesh": "default", "name": "api", "spec": {"ports": [{"port": 80}]}}
    one = parse_document(
        {**base, "status": {"dataplaneProxies": {"connected": 1, "healthy": 1, "total": 1}}}, REG
    )
    two = parse_document(
        {**base, "status": {"dataplaneProxies": {"connected": 2}, "tls": {"status": "Ready"}}}, REG
    )
    vip = parse_document({**base, "status": {"vips": [{"ip": "241.0.0.1"}]}}, REG)
    assert one.digest == two.digest != vip.digest
    assert one.spec_dict()["status"]["dataplaneProxies"]["connected"] == 1  # still stored and served


async def test_another_zones_copy_carries_its_zones_counts(store: ResourceStore, tmp_path: Path) -> None:
    """A zone keeps its own VIP and hostnames on a copy the global sends again, and takes the source zone's
    counts."""
    client = ZoneSync(
        store, REG, zone="west", global_address="grpcs://127.0.0.1:1", token_file=tmp_path / "t", ca_cert=None
    )
    labels = {"kuma.io/origin": "global", "kuma.io/zone": "east", "kuma.io/display-name": "api"}
    spec = {"spec": {"selector": {"dataplaneTags": {"kuma.io/service": "api"}}, "ports": [{"port": 80}]}}
    wire = {"type": "MeshService", "mesh": "default", "name": "api-east", "labels": labels}
    east = {"dataplaneProxies": {"connected": 1, "healthy": 1, "total": 1}, "tls": {"status": "Ready"}}
    await client.apply_downstream(Changes(upsert=[{**wire, "spec": {**spec, "status": east}}]))
    mine = {"vips": [{"ip": "241.0.0.7"}], **east}
    await store.write(
        [Op(OpKind.UPDATE, "MeshService", "default", "api-east", {**spec, "status": mine}, labels)]
    )
    later = {"vips": [{"ip": "241.0.0.1"}], "dataplaneProxies": {"connected": 2, "healthy": 1, "total": 2}}
    await client.apply_downstream(Changes(upsert=[{**wire, "spec": {**spec, "status": later}}]))
    copy = await store.get("MeshService", "default", "api-east")
    assert copy is not None
    assert copy.spec["status"] == {
        "vips": [{"ip": "241.0.0.7"}],
        "dataplaneProxies": later["dataplaneProxies"],
    }


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


async def test_the_running_loop_echoes_no_pass_and_follows_a_connection(store: ResourceStore) -> None:
    """The loop's own status writes start no full pass; a connection change starts a light one."""
    await _apply(store, SETUP)
    facts = Facts(connected={"api-1"})
    controller = NamesController(store, REG, proxies=facts)
    task = asyncio.create_task(controller.run())
    try:

        async def counted(connected: int) -> bool:
            counts: dict[str, int] = (await _status(store))[1].get("dataplaneProxies", {})
            return counts.get("connected") == connected

        await _until(lambda: counted(1), "the first count")
        facts.online.add("api-2")
        controller.proxy_changed("default.api-2")
        await _until(lambda: counted(2), "api-2 counted as connected")
        assert controller.passes == 1 and controller.light_passes >= 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
