"""MeshServices across zones (issue 9): a zone's MeshService travels zone -> global -> the other zones, where it is
labelled ``kuma.io/origin: global`` (Kuma's MADR 057) without the source zone's generator label, gets the hostname of
the global's ``synced-universal-mesh-service`` generator (HostnameGenerators made on the global reach the zones) and
a VIP of that zone, and is never taken for the receiving zone's own generated MeshService. A global generates none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from isthmus.catalog import default_registry
from isthmus.kds.sync import Changes, downstream_wire, upstream_on_global, upstream_wire
from isthmus.kds.zone_client import ZoneSync
from isthmus.names.controller import NamesController
from isthmus.names.generate import labels_for
from isthmus.resources.hostnames import GLOBAL_DEFAULTS, ZONE_DEFAULTS
from isthmus.resources.registry import KdsScope
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, Record, ResourceStore

REGISTRY = default_registry()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = {
    "spec": {
        "selector": {"dataplaneTags": {"kuma.io/service": "edge-gcp"}},
        "ports": [{"port": 8000, "targetPort": 8000, "appProtocol": "http"}],
    }
}
MESH = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def _rtype(kind: str) -> Any:
    found = REGISTRY.kind(kind)
    assert found is not None
    return found


def _gcp_record() -> Record:
    """edge-gcp's MeshService as gcp's generator labels it."""
    return Record(
        "MeshService", "default", "edge-gcp", SPEC, labels_for("default", "edge-gcp", "gcp"), 1, NOW, NOW
    )


def _on_global() -> Record:
    up = upstream_wire(_rtype("MeshService"), _gcp_record(), "gcp")
    assert up is not None
    stored = upstream_on_global(up, "gcp")
    return Record("MeshService", "default", stored["name"], stored["spec"], stored["labels"], 1, NOW, NOW)


def test_meshservice_syncs_from_a_zone_to_every_other_zone() -> None:
    assert _rtype("MeshService").sync is KdsScope.FROM_ZONE_TO_ALL
    assert _rtype("HostnameGenerator").sync is KdsScope.FROM_GLOBAL_OR_ZONE
    on_global = _on_global()
    assert on_global.name.startswith("edge-gcp-") and on_global.labels["kuma.io/origin"] == "zone"
    assert on_global.labels["kuma.io/zone"] == "gcp"
    assert downstream_wire(_rtype("MeshService"), on_global, "gcp") is None  # never back to its zone
    down = downstream_wire(_rtype("MeshService"), on_global, "azure")
    assert down is not None and down["name"] == on_global.name and down["spec"] == SPEC
    labels = down["labels"]
    assert labels["kuma.io/origin"] == "global" and labels["kuma.io/zone"] == "gcp"
    assert labels["kuma.io/display-name"] == "edge-gcp" and labels["kuma.io/env"] == "universal"
    assert "kuma.io/managed-by" not in labels
    # another zone's ZoneIngress keeps its labels as before
    zi = Record(
        "ZoneIngress", "", "zi-gcp-x", {}, {"kuma.io/origin": "zone", "kuma.io/zone": "gcp"}, 1, NOW, NOW
    )
    sent = downstream_wire(_rtype("ZoneIngress"), zi, "azure")
    assert sent is not None and sent["labels"]["kuma.io/origin"] == "zone"
    # the global's default HostnameGenerators go down; a zone's own stay in the zone
    synced = GLOBAL_DEFAULTS[-2].document("global")
    assert synced["name"] == "synced-universal-mesh-service"
    gen = Record("HostnameGenerator", "", synced["name"], synced["spec"], synced["labels"], 1, NOW, NOW)
    assert downstream_wire(_rtype("HostnameGenerator"), gen, "azure") is not None


@pytest.fixture
async def store() -> AsyncIterator[ResourceStore]:
    s = open_store("memory")
    await s.start()
    yield s
    await s.close()


async def _create(store: ResourceStore, kind: str, mesh: str, name: str, spec: Any, labels: Any) -> None:
    await store.write([Op(OpKind.CREATE, kind, mesh, name, spec, dict(labels))])


async def test_a_zone_names_another_zones_meshservice_and_keeps_it(store: ResourceStore) -> None:
    await _create(store, "Mesh", "", "default", MESH, {"kuma.io/origin": "global"})
    for default in GLOBAL_DEFAULTS:  # as synced down from the global
        doc = default.document("global")
        await _create(store, "HostnameGenerator", "", doc["name"], doc["spec"], doc["labels"])
    down = downstream_wire(_rtype("MeshService"), _on_global(), "azure")
    assert down is not None
    await _create(store, "MeshService", "default", down["name"], down["spec"], down["labels"])
    azure = NamesController(store, REGISTRY, mode="zone", zone="azure")
    await azure.ensure_defaults()  # the zone's local-* generators
    assert {d.name for d in ZONE_DEFAULTS} <= {r.name for r in (await store.list("HostnameGenerator")).items}
    for _ in range(3):
        await azure.sync()
    (copy,) = (await store.list("MeshService", "default")).items
    assert copy.name == down["name"] and copy.labels == down["labels"]  # no deletion grace: not azure's own
    status = copy.spec["status"]
    assert [a["hostname"] for a in status["addresses"]] == ["edge-gcp.svc.gcp.mesh.local"]
    assert status["vips"][0]["ip"].startswith("241.")


async def test_a_global_generates_no_meshservice_from_dataplane_copies(store: ResourceStore) -> None:
    await _create(store, "Mesh", "", "default", {**MESH, "meshServices": {"mode": "Exclusive"}}, {})
    dataplane = {
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "catalog", "kuma.io/protocol": "http"}}],
        }
    }
    labels = {"kuma.io/origin": "zone", "kuma.io/zone": "gcp", "kuma.io/display-name": "catalog-1"}
    await _create(store, "Dataplane", "default", "catalog-1-xyz", dataplane, labels)
    await NamesController(store, REGISTRY, mode="global").sync()
    assert (await store.list("MeshService", "default")).items == []
    await NamesController(store, REGISTRY, mode="zone", zone="gcp").sync()  # a zone does
    assert [r.name for r in (await store.list("MeshService", "default")).items] == ["catalog"]


async def test_a_zone_keeps_its_own_status_when_the_global_sends_a_copy_again(
    store: ResourceStore, tmp_path: Path
) -> None:
    """The global's copy carries the global's status; a zone receiving it again (every reconnect) keeps its VIP
    and hostnames, so a gateway naming the hostname never loses its mesh leg."""
    client = ZoneSync(
        store,
        REGISTRY,
        zone="azure",
        global_address="grpcs://127.0.0.1:1",
        token_file=tmp_path / "t",
        ca_cert=None,
    )
    down = downstream_wire(_rtype("MeshService"), _on_global(), "azure")
    assert down is not None
    await client.apply_downstream(Changes(upsert=[down]))
    (copy,) = (await store.list("MeshService", "default")).items
    mine = {"addresses": [{"hostname": "edge-gcp.svc.gcp.mesh.local"}], "vips": [{"ip": "241.0.0.9"}]}
    await store.write([Op(OpKind.UPDATE, "MeshService", "default", copy.name, {**copy.spec, "status": mine}, copy.labels)])  # fmt: skip
    again = {**down, "spec": {**SPEC, "status": {"vips": [{"ip": "241.0.0.1"}]}}}
    await client.apply_downstream(Changes(upsert=[again]))
    (copy,) = (await store.list("MeshService", "default")).items
    assert copy.spec == {**SPEC, "status": mine}
    changed = {**again, "spec": {"spec": {**SPEC["spec"], "ports": [{"port": 9000, "appProtocol": "http"}]}}}
    await client.apply_downstream(Changes(upsert=[changed]))  # the spec follows the global
    (copy,) = (await store.list("MeshService", "default")).items
    assert copy.spec["spec"]["ports"][0]["port"] == 9000 and copy.spec["status"] == mine
