"""Kuma fields against a real control plane (``isthmus cp run``, SQLite store): mesh membership refuses a
Dataplane's registration with Kuma's message, fields Isthmus does not act on are refused naming the field, and
records stored before those refusals existed still load and configure their proxies after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.store import open_store
from isthmus.store.base import Op, OpKind
from tests.e2e.harness import ControlPlane, wait_for

# test/e2e_env/universal/membership/membership.go
MEMBERSHIP = yaml.safe_load("""
type: Mesh
name: membership
constraints:
  dataplaneProxy:
    requirements:
    - tags:
        kuma.io/service: demo-client
    restrictions:
    - tags:
        kuma.io/service: test-server
""")


def dataplane(mesh: str, name: str, service: str, **inbound: Any) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": 20001, "servicePort": 8001, "tags": {"kuma.io/service": service}, **inbound}
            ],
        },
    }


# written straight into the store, as an Isthmus that accepted these fields would have kept them
LEGACY_MESH = {"logging": {"backends": [{"name": "f", "type": "file"}]}, "routing": {"zoneEgress": True}}
LEGACY_DP = dataplane("legacy", "old-1", "old")
LEGACY_DP["metrics"] = {"type": "prometheus", "conf": {"port": 1234, "path": "/metrics"}}


async def _seed(store_spec: str) -> None:
    store = open_store(store_spec)
    await store.start()
    try:
        spec = {k: v for k, v in LEGACY_DP.items() if k not in ("type", "mesh", "name")}
        await store.write(
            [
                Op(OpKind.UPSERT, "Mesh", "", "legacy", spec=LEGACY_MESH),
                Op(OpKind.UPSERT, "Dataplane", "legacy", "old-1", spec=spec),
            ]
        )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp: Path = tmp_path_factory.mktemp("kuma-fields")
    plane = ControlPlane(tmp)
    asyncio.run(_seed(plane.store))
    try:
        plane.start()
        plane.apply(yaml.safe_dump(MEMBERSHIP))
        yield plane
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- control plane log ---\n{plane.proc.log() if plane.proc else ''}"
        ) from None
    finally:
        plane.stop()
        plane.http.close()


def test_a_dataplane_that_fulfills_a_requirement_joins(cp: ControlPlane) -> None:
    resp = cp.http.put(
        "/meshes/membership/dataplanes/demo-client",
        json=dataplane("membership", "demo-client", "demo-client"),
    )
    assert resp.status_code == 201, resp.text


def test_a_dataplane_outside_the_constraints_is_refused_with_kumas_message(cp: ControlPlane) -> None:
    doc = dataplane("membership", "test-server", "test-server")
    resp = cp.http.put("/meshes/membership/dataplanes/test-server", json=doc)
    assert resp.status_code == 400, resp.text
    assert resp.json()["invalid_parameters"] == [
        {
            "field": "networking.inbound[0].tags",
            "reason": 'dataplane cannot be a member of mesh "membership" because its tags '
            '"kuma.io/service=test-server" does not fulfill any requirements defined on the Mesh',
        }
    ]
    assert cp.http.get("/meshes/membership/dataplanes/test-server").status_code == 404


def test_fields_not_acted_on_are_refused_naming_the_field(cp: ControlPlane) -> None:
    doc = dataplane("membership", "probed", "demo-client")
    doc["probes"] = {"port": 9000}
    resp = cp.http.put("/meshes/membership/dataplanes/probed", json=doc)
    assert resp.status_code == 400, resp.text
    ((problem),) = resp.json()["invalid_parameters"]
    assert problem["field"] == "probes"
    assert "not supported yet" in problem["reason"]


def test_records_stored_with_refused_fields_still_configure_their_proxies(cp: ControlPlane) -> None:
    def generated() -> dict[str, Any] | None:
        body: dict[str, Any] = cp.http.get("/meshes/legacy/dataplanes/old-1/_config").json()
        return body if any("Listener" in t for t in body.get("xds", {})) else None

    body = wait_for(generated, 30, what="old-1's configuration")
    assert body is not None and body["error"] is None
    listeners = next(v for k, v in body["xds"].items() if k.endswith("Listener"))
    assert any(listener.get("name") == "inbound:127.0.0.1:20001" for listener in listeners)
    # applying the same document again is refused
    resp = cp.http.put("/meshes/legacy/dataplanes/old-1", json=LEGACY_DP)
    assert resp.status_code == 400, resp.text
    assert resp.json()["invalid_parameters"][0]["field"] == "metrics"
