"""The REST API of a real control plane process: Kuma paths, pagination, errors, concurrency, atomicity."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ControlPlane

MESH: dict[str, Any] = {
    "type": "Mesh",
    "name": "default",
    "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
}


def dp(name: str, port: int = 10001, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": port, "tags": {"kuma.io/service": "web"}}],
        },
    }
    doc.update(over)
    return doc


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("api")).start()
    try:
        assert plane.http.put("/meshes/default", json=MESH).status_code in (200, 201)
        yield plane
    finally:
        plane.stop()


def test_index_and_openapi(cp: ControlPlane) -> None:
    index = cp.http.get("/").json()
    assert index["product"] == "Isthmus"
    assert index["xdsAddress"].endswith(f":{cp.xds_port}")
    spec = cp.http.get("/openapi.json").json()
    assert "/meshes/{mesh}/{plural}/{name}" in spec["paths"]


def test_openapi_declares_the_real_error_responses(cp: ControlPlane) -> None:
    spec = cp.http.get("/openapi.json").json()
    operations = [op for item in spec["paths"].values() for op in item.values()]
    assert all("422" not in op["responses"] for op in operations)
    resource = spec["paths"]["/meshes/{mesh}/{plural}/{name}"]
    assert {"200", "201", "400", "404", "409", "405"} <= set(resource["put"]["responses"])
    problem = resource["get"]["responses"]["404"]["content"]["application/json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "Allow" in resource["get"]["responses"]["405"]["headers"]
    offset = next(p for p in spec["paths"]["/meshes"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 1_000_000_000
    assert {"401", "403", "413"} <= set(resource["put"]["responses"])
    too_big = cp.http.put("/meshes/default/dataplanes/big", content=b"{" + b" " * (1 << 20) + b"}")
    assert too_big.status_code == 413
    assert set(too_big.json()) <= set(spec["components"]["schemas"]["Problem"]["properties"])


@pytest.mark.parametrize(
    "params", [{"offset": 2**63}, {"offset": 10**10}, {"offset": -1}, {"size": 0}, {"size": 1001}]
)
def test_page_arguments_out_of_bounds_get_400(cp: ControlPlane, params: dict[str, int]) -> None:
    for path in ("/meshes", "/meshes/default/dataplanes", "/meshes/default/dataplanes+insights"):
        resp = cp.http.get(path, params=params)
        assert resp.status_code == 400, resp.text
        assert [p["field"] for p in resp.json()["invalid_parameters"]] == [f"query.{next(iter(params))}"]
    last = cp.http.get("/meshes", params={"offset": 1_000_000_000, "size": 1000})
    assert last.status_code == 200 and last.json()["items"] == [] and last.json()["next"] is None


def test_a_method_the_path_lacks_gets_405_with_allow(cp: ControlPlane) -> None:
    for path, allowed in [
        ("/meshes/default", "GET, PUT, DELETE"),
        ("/meshes/default/dataplanes/x", "GET, PUT, DELETE"),
        ("/meshes/default/dataplanes+insights/x", "GET"),  # an insight, not a resource type
        ("/meshes", "GET"),
    ]:
        resp = cp.http.request("PATCH", path)
        assert resp.status_code == 405, resp.text
        assert resp.headers["Allow"] == allowed
        assert resp.json()["status"] == 405
    unknown_type = cp.http.request("PATCH", "/meshes/default/gadgets/x")
    assert unknown_type.status_code == 404
    assert cp.http.get("/meshes/default/gadgets/x").status_code == 404


def test_create_get_update_delete(cp: ControlPlane) -> None:
    created = cp.http.put("/meshes/default/dataplanes/crud-1", json=dp("crud-1", 11001))
    assert created.status_code == 201
    assert created.json()["creationTime"]
    updated = cp.http.put("/meshes/default/dataplanes/crud-1", json=dp("crud-1", 11002))
    assert updated.status_code == 200
    got = cp.http.get("/meshes/default/dataplanes/crud-1").json()
    assert got["networking"]["inbound"][0]["port"] == 11002
    assert cp.http.delete("/meshes/default/dataplanes/crud-1").status_code == 200
    missing = cp.http.get("/meshes/default/dataplanes/crud-1")
    assert missing.status_code == 404
    assert "crud-1" in missing.json()["detail"]


def test_pagination(cp: ControlPlane) -> None:
    for i in range(5):
        assert (
            cp.http.put(f"/meshes/default/dataplanes/page-{i}", json=dp(f"page-{i}", 12000 + i)).status_code
            == 201
        )
    first = cp.http.get("/meshes/default/dataplanes", params={"size": 2}).json()
    assert len(first["items"]) == 2 and first["total"] >= 5 and first["next"]
    names = [i["name"] for i in first["items"]]
    url = first["next"]
    while url:
        page = cp.http.get(url).json()
        names += [i["name"] for i in page["items"]]
        url = page["next"]
    assert {f"page-{i}" for i in range(5)} <= set(names)
    assert len(names) == len(set(names)) == first["total"]


def test_stale_update_gets_409(cp: ControlPlane) -> None:
    r1 = cp.http.put("/meshes/default/dataplanes/occ", json=dp("occ", 13001))
    version = r1.headers["ETag"]
    assert (
        cp.http.put(
            "/meshes/default/dataplanes/occ", json=dp("occ", 13002), headers={"If-Match": version}
        ).status_code
        == 200
    )
    stale = cp.http.put(
        "/meshes/default/dataplanes/occ", json=dp("occ", 13003), headers={"If-Match": version}
    )
    assert stale.status_code == 409
    assert cp.http.get("/meshes/default/dataplanes/occ").json()["networking"]["inbound"][0]["port"] == 13002


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/meshes/default/dataplanes/bad-1", "type: Dataplane\nname: [oops", ""),
        ("/meshes/default/dataplanes/bad-2", {"type": "Foo", "name": "bad-2"}, "type"),
        ("/meshes/nomesh/dataplanes/bad-3", dp("bad-3", mesh="nomesh"), "mesh"),
        ("/meshes/default/dataplanes/bad-4", dp("bad-4", 70000), "networking.inbound[0].port"),
        (
            "/meshes/default/dataplanes/bad-5",
            dp("bad-5", networking={"address": "127.0.0.1", "inbound": [
                {"port": 1, "tags": {"kuma.io/service": "a"}}, {"port": 1, "tags": {"kuma.io/service": "a"}}]}),
            "networking.inbound[1].port",
        ),
        (
            "/meshes/default/meshtrafficpermissions/bad-6",
            {"type": "MeshTrafficPermission", "mesh": "default", "name": "bad-6",
             "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Maybe"}}]}},
            "spec.from[0].default.action",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_nothing_stored(cp: ControlPlane, path: str, body: Any, field: str) -> None:
    if isinstance(body, str):
        resp = cp.http.put(path, content=body, headers={"content-type": "application/yaml"})
    else:
        resp = cp.http.put(path, json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()
    assert err["status"] == 400
    assert field in [p["field"] for p in err["invalid_parameters"]]
    assert all(p["reason"] for p in err["invalid_parameters"])
    assert cp.http.get(path).status_code == 404


def test_ca_private_key_is_never_served(cp: ControlPlane) -> None:
    assert cp.http.put("/meshes/default/dataplanes/ca-check", json=dp("ca-check", 14001)).status_code == 201
    assert cp.http.get("/meshes/default/secrets").status_code == 404
    deadline = time.monotonic() + 10
    config = ""
    while time.monotonic() < deadline:  # configuration is generated asynchronously after the write
        config = cp.http.get("/meshes/default/dataplanes/ca-check/_config").text
        if "BEGIN CERTIFICATE" in config:
            break
        time.sleep(0.2)
    assert "PRIVATE KEY" not in config
    assert "BEGIN CERTIFICATE" in config  # the proxy's certificate and the CA bundle are shown


def test_deleting_a_mesh_deletes_its_resources(cp: ControlPlane) -> None:
    other = {"type": "Mesh", "name": "temp"}
    assert cp.http.put("/meshes/temp", json=other).status_code == 201
    assert cp.http.put("/meshes/temp/dataplanes/t1", json=dp("t1", mesh="temp")).status_code == 201
    assert cp.http.delete("/meshes/temp").status_code == 200
    assert cp.http.get("/meshes/temp").status_code == 404
    assert cp.http.get("/meshes/temp/dataplanes/t1").status_code == 404


def test_restart_keeps_resources(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path).start()
    try:
        assert plane.http.put("/meshes/default", json=MESH).status_code == 201
        assert plane.http.put("/meshes/default/dataplanes/keep", json=dp("keep")).status_code == 201
        plane.stop()
        plane.start()
        assert plane.http.get("/meshes/default/dataplanes/keep").status_code == 200
    finally:
        plane.stop()
