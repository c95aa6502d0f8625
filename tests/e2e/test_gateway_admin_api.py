"""Kong's Admin API served by a real control plane (``cp run --gateway-admin-address``), on a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ControlPlane

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("gateway")).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture()
def kong(cp: ControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10) as client:
        yield client


def test_root_and_status(kong: httpx.Client) -> None:
    root = kong.get("/").json()
    assert root["version"].startswith("3.") and len(root["configuration_hash"]) == 32
    assert "cors" in root["plugins"]["available_on_server"]
    assert kong.get("/status").json()["database"] == {"reachable": True}
    assert kong.post("/").status_code == 405
    assert kong.post("/").json() == {"message": "Method not allowed"}


def test_service_crud_upsert_and_errors(kong: httpx.Client) -> None:
    before = kong.get("/").json()["configuration_hash"]
    created = kong.post("/services", json={"name": "crud", "url": "http://example.com:8080/api"})
    assert created.status_code == 201, created.text
    service = created.json()
    assert (service["host"], service["port"], service["path"], service["retries"]) == ("example.com", 8080, "/api", 5)  # fmt: skip
    assert kong.get("/").json()["configuration_hash"] != before
    assert kong.get(f"/services/{service['id']}").json() == service
    assert kong.get("/services/crud").json()["id"] == service["id"]
    patched = kong.patch("/services/crud", json={"retries": 2}).json()
    assert patched["retries"] == 2 and patched["host"] == "example.com" and patched["id"] == service["id"]
    # PUT by name replaces (fields not given go back to their defaults), keeps the id
    put = kong.put("/services/crud", json={"host": "other.example"})
    assert put.status_code == 200
    assert put.json()["id"] == service["id"] and put.json()["retries"] == 5 and put.json()["name"] == "crud"
    # PUT of a new name creates it
    fresh = kong.put("/services/made-by-put", json={"host": "x.example"})
    assert fresh.status_code == 200 and fresh.json()["name"] == "made-by-put"
    # 409 on a duplicate name, 400 on a bad field, 404 on a missing entity
    dup = kong.post("/services", json={"name": "crud", "host": "a"})
    assert dup.status_code == 409
    assert dup.json() == {
        "code": 5,
        "name": "unique constraint violation",
        "message": "UNIQUE violation detected on '{name=\"crud\"}'",
        "fields": {"name": "crud"},
    }
    bad = kong.post("/services", json={"path": "x"})
    assert bad.status_code == 400
    assert bad.json()["fields"] == {"host": "required field missing", "path": "should start with: /"}
    assert kong.get("/services/nope").status_code == 404
    assert kong.get("/services/nope").json() == {"message": "Not found"}
    assert kong.post("/services/crud").status_code == 405
    assert kong.delete("/services/made-by-put").status_code == 204
    assert kong.delete("/services/made-by-put").status_code == 204  # idempotent
    assert kong.get("/services/made-by-put").status_code == 404


def test_routes_nested_and_referenced_service(kong: httpx.Client) -> None:
    service = kong.post("/services", json={"name": "web", "url": "http://web.mesh"}).json()
    route = kong.post("/services/web/routes", json={"name": "web-root", "paths": ["/web"]})
    assert route.status_code == 201, route.text
    assert route.json()["service"] == {"id": service["id"]} and route.json()["strip_path"] is True
    flat = kong.post("/routes", json={"name": "flat", "hosts": ["*.example.com"], "service": {"name": "web"}})
    assert flat.status_code == 201 and flat.json()["service"] == {"id": service["id"]}
    listed = kong.get("/services/web/routes").json()["data"]
    assert {r["name"] for r in listed} == {"web-root", "flat"}
    assert kong.get("/routes/web-root/service").json()["id"] == service["id"]
    assert kong.get(f"/services/web/routes/{route.json()['id']}").status_code == 200
    missing = kong.post("/routes", json={"paths": ["/x"], "service": {"name": "ghost"}})
    assert missing.status_code == 400 and missing.json()["code"] == 4 and missing.json()["fields"] == {"service": {"name": "ghost"}}  # fmt: skip
    regex = kong.post("/routes", json={"paths": ["~/(bad"]})
    assert regex.status_code == 400 and regex.json()["fields"]["paths"][0].startswith("invalid regex")
    refused = kong.delete("/services/web")
    assert refused.status_code == 400 and refused.json()["name"] == "foreign key violation"
    assert kong.get("/services/web").status_code == 200
    plugin = kong.post("/routes/flat/plugins", json={"name": "correlation-id"})
    assert plugin.status_code == 201 and plugin.json()["route"] == {"id": flat.json()["id"]}
    dup = kong.post("/plugins", json={"name": "correlation-id", "route": {"id": flat.json()["id"]}})
    assert dup.status_code == 409
    unknown = kong.post("/plugins", json={"name": "no-such-plugin"})
    assert unknown.status_code == 400 and "not enabled" in unknown.json()["fields"]["name"]
    for name in ("web-root", "flat"):
        assert kong.delete(f"/routes/{name}").status_code == 204
    assert kong.get(f"/plugins/{plugin.json()['id']}").status_code == 404  # cascaded with its route
    assert kong.delete("/services/web").status_code == 204


def test_consumers_and_credentials(kong: httpx.Client) -> None:
    consumer = kong.post("/consumers", json={"username": "alice", "custom_id": "a-1"}).json()
    key = kong.post("/consumers/alice/key-auth", json={"key": "secret-key"})
    assert key.status_code == 201 and key.json()["consumer"] == {"id": consumer["id"]}
    generated = kong.post("/consumers/alice/key-auth", json={}).json()
    assert len(generated["key"]) == 32
    assert kong.post("/consumers/alice/key-auth", json={"key": "secret-key"}).status_code == 409
    basic = kong.post("/consumers/alice/basic-auth", json={"username": "alice", "password": "pw"}).json()
    assert basic["password"] != "pw" and len(basic["password"]) == 40
    jwt = kong.post("/consumers/alice/jwt", json={}).json()
    assert jwt["algorithm"] == "HS256" and jwt["key"] and jwt["secret"]
    acl = kong.post("/consumers/alice/acls", json={"group": "gold"})
    assert acl.status_code == 201
    assert kong.get("/consumers/alice/acls/gold").json()["id"] == acl.json()["id"]
    assert len(kong.get("/consumers/alice/key-auth").json()["data"]) == 2
    assert kong.get("/key-auths/secret-key").json()["id"] == key.json()["id"]
    bob = kong.post("/consumers", json={"username": "bob"}).json()
    assert kong.get(f"/consumers/bob/key-auth/{key.json()['id']}").status_code == 404  # not bob's
    assert bob["custom_id"] is None
    assert kong.post("/consumers", json={}).status_code == 400
    assert kong.delete("/consumers/alice").status_code == 204
    assert kong.get("/key-auths/secret-key").status_code == 404  # credentials go with their consumer


def test_upstreams_targets_certificates(kong: httpx.Client, tmp_path: Path) -> None:
    from tests.unit.test_gateway_store import ca_pem, self_signed

    upstream = kong.post("/upstreams", json={"name": "backend.internal"}).json()
    assert upstream["algorithm"] == "round-robin"
    target = kong.post("/upstreams/backend.internal/targets", json={"target": "10.0.0.1"})
    assert target.status_code == 201 and target.json()["target"] == "10.0.0.1:8000"
    assert target.json()["upstream"] == {"id": upstream["id"]}
    assert (
        kong.post("/upstreams/backend.internal/targets", json={"target": "10.0.0.1:8000"}).status_code == 409
    )
    assert kong.get("/targets").status_code == 404
    assert kong.delete("/upstreams/backend.internal").status_code == 204
    cert_pem, key_pem = self_signed("api.example.com")
    cert = kong.post("/certificates", json={"cert": cert_pem, "key": key_pem, "snis": ["api.example.com"]})
    assert cert.status_code == 201, cert.text
    assert cert.json()["snis"] == ["api.example.com"]
    sni = kong.get("/snis/api.example.com").json()
    assert sni["certificate"] == {"id": cert.json()["id"]}
    other_cert, other_key = self_signed("b.example.com")
    mismatch = kong.post("/certificates", json={"cert": cert_pem, "key": other_key})
    assert mismatch.status_code == 400 and mismatch.json()["fields"] == {"@entity": ["certificate does not match key"]}  # fmt: skip
    ca = kong.post("/ca_certificates", json={"cert": ca_pem()})
    assert ca.status_code == 201 and len(ca.json()["cert_digest"]) == 64
    not_ca = kong.post("/ca_certificates", json={"cert": other_cert})
    assert not_ca.status_code == 400 and "CA" in not_ca.json()["fields"]["cert"]


def test_pagination_over_250_routes_and_tags(kong: httpx.Client) -> None:
    for i in range(250):
        tags = ["bulk", "even" if i % 2 == 0 else "odd"]
        resp = kong.post("/routes", json={"name": f"bulk-{i}", "paths": [f"/bulk/{i}"], "tags": tags})
        assert resp.status_code == 201, resp.text
    seen: list[str] = []
    page = kong.get("/routes", params={"size": 100, "tags": "bulk"}).json()
    pages = 1
    while True:
        seen.extend(r["name"] for r in page["data"])
        if page["next"] is None:
            break
        page = kong.get(page["next"]).json()
        pages += 1
    assert pages == 3 and len(seen) == 250 and len(set(seen)) == 250
    assert len(kong.get("/routes", params={"tags": "bulk,even", "size": 1000}).json()["data"]) == 125
    assert len(kong.get("/routes", params={"tags": "even/odd", "size": 1000}).json()["data"]) == 250
    bad_size = kong.get("/routes", params={"size": 0})
    assert bad_size.status_code == 400 and bad_size.json()["code"] == 9
    bad_offset = kong.get("/routes", params={"offset": "!!!"})
    assert bad_offset.status_code == 400 and bad_offset.json()["code"] == 7
    tagged = kong.get("/tags/even", params={"size": 1000}).json()["data"]
    assert len(tagged) == 125 and tagged[0]["entity_name"] == "routes"


def test_workspaces_are_isolated(kong: httpx.Client) -> None:
    assert kong.post("/team-a/services", json={"name": "shared-name", "host": "a.example"}).status_code == 201
    assert kong.post("/services", json={"name": "shared-name", "host": "root.example"}).status_code == 201
    assert kong.get("/team-a/services/shared-name").json()["host"] == "a.example"
    assert kong.get("/services/shared-name").json()["host"] == "root.example"
    assert kong.get("/team-b/services/shared-name").status_code == 404
    listed = kong.get("/team-a/services").json()["data"]
    assert [s["name"] for s in listed] == ["shared-name"]


def test_entities_survive_a_restart(cp: ControlPlane, kong: httpx.Client) -> None:
    kong.post("/services", json={"name": "durable", "host": "d.example"})
    kong.post("/services/durable/routes", json={"name": "durable-route", "paths": ["/d"]})
    kong.post("/team-a/consumers", json={"username": "carol"})
    hash_before = kong.get("/").json()["configuration_hash"]
    cp.stop()
    cp.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10) as again:
        assert again.get("/services/durable").json()["host"] == "d.example"
        assert again.get("/routes/durable-route/service").json()["name"] == "durable"
        assert again.get("/team-a/consumers/carol").status_code == 200
        assert again.get("/").json()["configuration_hash"] == hash_before
