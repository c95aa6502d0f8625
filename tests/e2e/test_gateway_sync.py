"""``isthmus gateway apply | dump`` and ``POST /config`` against a real control plane (SQLite store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from isthmus.cli.main import app
from tests.e2e.harness import ControlPlane

pytestmark = pytest.mark.e2e

runner = CliRunner()

KONG = """
_format_version: "3.0"
services:
- name: orders
  url: http://orders.mesh
  routes:
  - name: orders-api
    paths: [/orders]
  plugins:
  - name: correlation-id
- name: billing
  host: billing.mesh
  routes:
  - name: billing-api
    paths: [/billing]
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-key
upstreams:
- name: backend.internal
  targets:
  - target: 10.0.0.1:80
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("gateway-sync")).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture()
def kong(cp: ControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=30) as client:
        yield client


def gateway(cp: ControlPlane, *args: str, stdin: str | None = None) -> Result:
    env = {"ISTHMUS_GATEWAY_ADMIN_ADDRESS": f"http://127.0.0.1:{cp.gateway_admin_port}"}
    return runner.invoke(app, ["gateway", *args], input=stdin, env=env, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def write(tmp_path: Path, text: str, name: str = "kong.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


NO_CHANGE = "Summary:\n  Created: 0\n  Updated: 0\n  Deleted: 0\n"


def test_apply_reapply_remove_and_dump_round_trip(
    cp: ControlPlane, kong: httpx.Client, tmp_path: Path
) -> None:
    out = ok(gateway(cp, "apply", "-f", write(tmp_path, KONG), "--workspace", "sync"))
    assert "creating service orders\n" in out and "creating route billing-api\n" in out
    assert "creating keyauth_credential alice-key\n" in out and "creating target 10.0.0.1:80\n" in out
    assert out.endswith("Summary:\n  Created: 9\n  Updated: 0\n  Deleted: 0\n")
    orders = kong.get("/sync/services/orders").json()
    assert (
        orders["host"] == "orders.mesh"
        and kong.get("/sync/routes/orders-api/service").json()["id"] == orders["id"]
    )
    hash_before = kong.get("/sync/status").json()["configuration_hash"]
    # re-apply: nothing to do, and the dry run says so
    assert (
        ok(gateway(cp, "apply", "-f", write(tmp_path, KONG), "--workspace", "sync", "--dry-run")) == NO_CHANGE
    )
    assert ok(gateway(cp, "apply", "-f", write(tmp_path, KONG), "--workspace", "sync")) == NO_CHANGE
    assert kong.get("/sync/status").json()["configuration_hash"] == hash_before
    assert kong.get("/sync/services/orders").json() == orders
    # removing entities from the file deletes them (a route, and a service with its route)
    smaller = KONG.replace("- name: billing\n  host: billing.mesh\n  routes:\n  - name: billing-api\n    paths: [/billing]\n", "")  # fmt: skip
    smaller = smaller.replace("  plugins:\n  - name: correlation-id\n", "")
    dry = ok(gateway(cp, "apply", "-f", write(tmp_path, smaller), "--workspace", "sync", "--dry-run"))
    assert dry == (
        "deleting service billing\ndeleting route billing-api\ndeleting plugin correlation-id\n"
        "Summary:\n  Created: 0\n  Updated: 0\n  Deleted: 3\n"
    )
    assert kong.get("/sync/services/billing").status_code == 200  # the dry run changed nothing
    ok(gateway(cp, "apply", "-f", write(tmp_path, smaller), "--workspace", "sync"))
    assert kong.get("/sync/services/billing").status_code == 404
    assert kong.get("/sync/routes/billing-api").status_code == 404
    assert kong.get("/sync/plugins").json()["data"] == []
    assert kong.get("/sync/services/orders").json()["id"] == orders["id"]
    # an update is one change
    changed = ok(gateway(cp, "apply", "-f", write(tmp_path, smaller.replace("/orders]", "/orders, /v2/orders]")), "--workspace", "sync"))  # fmt: skip
    assert changed == "updating route orders-api\nSummary:\n  Created: 0\n  Updated: 1\n  Deleted: 0\n"
    # dump | apply: no change, here and into a fresh workspace
    dumped = ok(gateway(cp, "dump", "--workspace", "sync"))
    assert dumped.startswith("_format_version: '3.0'\n") and "_workspace: sync" in dumped
    assert ok(gateway(cp, "apply", "-f", "-", "--workspace", "sync", "--dry-run", stdin=dumped)) == NO_CHANGE
    assert ok(gateway(cp, "apply", "-f", "-", stdin=dumped)) == NO_CHANGE  # the file's _workspace: sync
    copied = ok(gateway(cp, "apply", "-f", "-", "--workspace", "copy", stdin=dumped))
    assert copied.endswith("Created: 6\n  Updated: 0\n  Deleted: 0\n")
    assert ok(gateway(cp, "dump", "--workspace", "copy")) == dumped.replace(
        "_workspace: sync", "_workspace: copy"
    )


def test_workspaces_are_isolated(cp: ControlPlane, kong: httpx.Client, tmp_path: Path) -> None:
    ok(gateway(cp, "apply", "-f", write(tmp_path, KONG), "--workspace", "team-a"))
    ok(gateway(cp, "apply", "-f", write(tmp_path, '_format_version: "3.0"\nservices:\n- {name: only-b, host: b.example}\n'), "--workspace", "team-b"))  # fmt: skip
    assert kong.get("/team-a/services/orders").status_code == 200
    assert kong.get("/team-b/services/orders").status_code == 404
    assert [s["name"] for s in kong.get("/team-b/services").json()["data"]] == ["only-b"]
    # emptying team-b leaves team-a alone
    ok(gateway(cp, "apply", "-f", write(tmp_path, '_format_version: "3.0"\n'), "--workspace", "team-b"))
    assert kong.get("/team-b/services").json()["data"] == []
    assert kong.get("/team-a/services/orders").status_code == 200


def test_a_bad_file_changes_nothing(cp: ControlPlane, kong: httpx.Client, tmp_path: Path) -> None:
    ok(gateway(cp, "apply", "-f", write(tmp_path, KONG), "--workspace", "bad"))
    before = kong.get("/bad/status").json()["configuration_hash"]
    broken = KONG.replace("paths: [/billing]", "paths: [billing]").replace("url: http://orders.mesh", "url: http://orders.mesh\n  retries: lots")  # fmt: skip
    result = gateway(cp, "apply", "-f", write(tmp_path, broken), "--workspace", "bad")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("Error: declarative config is invalid: ")
    assert "services[0].retries: expected an integer" in line
    assert "services[1].routes[0].paths[0]: should start with: /" in line
    aliases = gateway(cp, "apply", "-f", write(tmp_path, '_format_version: "3.0"\nservices:\n- &a {name: x, host: x}\n- *a\n'), "--workspace", "bad")  # fmt: skip
    assert aliases.exit_code == 1 and "anchors are not allowed" in aliases.stderr
    missing = gateway(cp, "apply", "-f", str(tmp_path / "nope.yaml"), "--workspace", "bad")
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: cannot read")
    assert kong.get("/bad/status").json()["configuration_hash"] == before
    unreachable = runner.invoke(app, ["gateway", "dump", "--gateway-admin-address", "127.0.0.1:1"])
    assert unreachable.exit_code == 1 and "cannot reach the gateway Admin API" in unreachable.stderr


def test_post_config_as_kong(kong: httpx.Client) -> None:
    body = {"_format_version": "3.0", "services": [{"name": "api", "host": "api.example", "routes": [{"name": "r", "paths": ["/"]}]}]}  # fmt: skip
    created = kong.post("/raw/config", json=body)
    assert created.status_code == 201, created.text
    loaded = created.json()
    (service,) = loaded["services"].values()
    (route,) = loaded["routes"].values()
    assert service["name"] == "api" and route["service"] == {"id": service["id"]}
    assert kong.post("/raw/config?check_hash=1", json=body).status_code == 304
    yaml_body = "_format_version: '3.0'\nservices:\n- name: api\n  host: api.example\n"
    assert kong.post("/raw/config", content=yaml_body, headers={"Content-Type": "application/x-yaml"}).status_code == 201  # fmt: skip
    assert kong.get("/raw/routes/r").status_code == 404
    form = kong.post("/raw/config", data={"config": yaml_body.replace("api.example", "form.example")})
    assert form.status_code == 201 and kong.get("/raw/services/api").json()["host"] == "form.example"
    bad = kong.post(
        "/raw/config?flatten_errors=1", json={"_format_version": "3.0", "services": [{"name": "x"}]}
    )
    assert bad.status_code == 400
    error = bad.json()
    assert (error["code"], error["name"]) == (14, "invalid declarative configuration")
    assert error["fields"] == {"services": [{"host": "required field missing"}]}
    assert error["flattened_errors"] == [
        {
            "entity_type": "service",
            "entity_name": "x",
            "entity_id": None,
            "entity_tags": None,
            "entity": {"name": "x"},
            "errors": [{"type": "field", "field": "host", "message": "required field missing"}],
        }
    ]
    assert (
        "flattened_errors"
        not in kong.post("/raw/config", json={"_format_version": "3.0", "services": [{}]}).json()
    )
    config = kong.get("/raw/config").json()["config"]
    assert "form.example" in config and config.startswith("_format_version: '3.0'")
    assert kong.put("/raw/config").status_code == 405


def test_the_research_example_through_the_cli(cp: ControlPlane, kong: httpx.Client, tmp_path: Path) -> None:
    from tests.unit.test_gateway_declarative import EXAMPLE

    out = ok(gateway(cp, "apply", "-f", write(tmp_path, EXAMPLE)))  # into the file's _workspace
    assert "creating vault my-workspace-vault\n" in out and out.endswith(
        "Created: 17\n  Updated: 0\n  Deleted: 0\n"
    )
    assert kong.get("/test-workspace/vaults/my-workspace-vault").json()["name"] == "env"
    assert kong.get("/test-workspace/key-sets/test-key-set/keys").json()["data"][0]["kid"] == "test-kid-123"
    assert kong.get("/test-workspace/consumer_groups/silver").status_code == 200
    assert kong.get("/test-workspace/snis/localhost").json()["certificate"] == {"id": "13c562a1-191c-4464-9b18-e5222b46035b"}  # fmt: skip
    assert kong.get("/services/mock1").status_code == 404  # not in the default workspace
    dumped = ok(gateway(cp, "dump", "--workspace", "test-workspace"))
    assert ok(gateway(cp, "apply", "-f", "-", stdin=dumped)) == NO_CHANGE
    # a tag-scoped dump: the tagged key-auth (its consumer is not tagged) refers to its consumer by id
    tagged = ok(gateway(cp, "dump", "--workspace", "test-workspace", "--select-tag", "test-key"))
    assert "select_tags:\n  - test-key\n" in tagged and "keyauth_credentials:\n" in tagged
    assert "test-api-key" in tagged and "test-jwt-key" not in tagged and "mock1" not in tagged
    assert ok(gateway(cp, "apply", "-f", "-", stdin=tagged)) == NO_CHANGE
