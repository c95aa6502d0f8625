"""Kong's declarative files (``_format_version: "3.0"``) synced into the gateway's store (a real SQLite store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from isthmus.gateway import declarative as d
from isthmus.gateway.errors import KongError
from isthmus.gateway.store import GatewayStore
from isthmus.store.sql import SqlStore

NESTED = """
_format_version: "3.0"
services:
- name: example-service
  url: http://example.com
  tags: [example]
  routes:
  - name: example-route
    paths: [/]
    plugins:
    - name: cors
  plugins:
  - name: correlation-id
consumers:
- username: example-user
  keyauth_credentials:
  - key: my-key
  - {}
  basicauth_credentials:
  - {username: basic_user, password: basic_pass}
  jwt_secrets:
  - key: test-jwt-key
  acls:
  - group: silver
  plugins:
  - name: rate-limiting
    config: {policy: local, second: 5, hour: 10000}
upstreams:
- name: upstream1
  targets:
  - target: 198.51.100.11:80
  - target: 198.51.100.12
    weight: 50
plugins:
- name: rate-limiting
  consumer: example-user
  service: example-service
  config: {hour: 2}
"""

# The complete example file of kong.md §2.2 (a decK fixture), verbatim.
EXAMPLE = """
_format_version: "3.0"
_workspace: test-workspace
_konnect:
  control_plane_name: default
services:
  - connect_timeout: 60000
    enabled: true
    host: httpbin.org
    name: mock1
    path: /anything
    port: 80
    protocol: http
    read_timeout: 60000
    retries: 5
    write_timeout: 60000
routes:
  - name: route-multi-entity-1
    paths:
      - /route-multi-entity-1
    https_redirect_status_code: 301
  - name: route-multi-entity-2
    paths:
      - /route-multi-entity-2
    https_redirect_status_code: 301
plugins:
  - name: rate-limiting
    route: route-multi-entity-1
    config:
      minute: 10
      policy: local
upstreams:
  - name: upstream1
    algorithm: round-robin
    targets:
      - target: 198.51.100.11:80
vaults:
  - config:
      base64_decode: false
      prefix: MY_SECRET_
    description: ENV vault for secrets
    name: env
    prefix: my-workspace-vault
certificates:
  - id: 13c562a1-191c-4464-9b18-e5222b46035b
    cert: "{vault://my-workspace-vault/cert}"
    key: "{vault://my-workspace-vault/key}"
    snis:
      - name: localhost

consumers:
  - custom_id: test_consumer_3x_custom_test
    username: test_consumer_3x
    acls:
      - group: silver
        tags:
          - test-acl
    basicauth_credentials:
      - username: basic_user
        password: basic_pass
        tags:
          - test-basic
    keyauth_credentials:
      - key: test-api-key
        tags:
          - test-key
    jwt_secrets:
      - key: test-jwt-key
        secret: test-jwt-secret
        algorithm: HS256
        tags:
          - test-jwt

consumer_groups:
  - id: 5bcbd3a7-030b-4310-bd1d-2721ff85d236
    name: silver

key_sets:
  - id: a1b2c3d4-5678-90ab-cdef-1234567890ab
    name: test-key-set
    tags:
      - test-keyset

keys:
  - id: b2c3d4e5-6789-01bc-def1-234567890abc
    name: test-key-jwk
    kid: test-kid-123
    jwk: '{"kty":"RSA","kid":"test-kid-123","use":"sig","alg":"RS256","n":"xGOr-H7A-PWG8_gM6F_kE3vN1RVwfFjLJZQXYRqLXe7bAzRUH3n7HWpCCBU3_xHJpC1lSYHPLvLvQwGh_V5JjqXuQ_3FqLrRYmQYPZRCCQXKF9b2cHvY5LqJfVY3OhOYLvMnLJ_MQ7cKcW7N8HhKLYmQVY3_HqLrRYmQYPZRCQ","e":"AQAB"}'
    tags:
      - test-key
    set:
      id: a1b2c3d4-5678-90ab-cdef-1234567890ab
"""


@pytest.fixture()
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    try:
        yield GatewayStore(store)
    finally:
        await store.close()


async def apply(
    gateway: GatewayStore, text: str, workspace: str = "default", dry_run: bool = False
) -> dict[str, Any]:
    result = await d.sync(gateway, workspace, d.load(text), dry_run=dry_run)
    return result.diff.report()


async def refused(gateway: GatewayStore, text: str) -> KongError:
    with pytest.raises(KongError) as info:
        await apply(gateway, text)
    assert (
        info.value.code == 14
        and info.value.status == 400
        and info.value.name == "invalid declarative configuration"
    )
    return info.value


async def test_nested_file_applies_and_reapplies_with_no_change(gateway: GatewayStore) -> None:
    report = await apply(gateway, NESTED)
    assert report["summary"] == {"created": 15, "updated": 0, "deleted": 0}
    ws = await gateway.workspace("default")
    service = ws.find("services", "example-service")
    assert service is not None and service["host"] == "example.com"
    route = ws.find("routes", "example-route")
    assert route is not None and route["service"] == {"id": service["id"]}
    consumer = ws.find("consumers", "example-user")
    assert consumer is not None
    scoped = [p for p in ws.entities["plugins"].values() if p["consumer"] and p["service"]]
    assert len(scoped) == 1 and scoped[0]["config"] == {"hour": 2}
    assert {p["name"] for p in ws.entities["plugins"].values() if p["route"] == {"id": route["id"]}} == {
        "cors"
    }
    keys = [k for k in ws.entities["key-auths"].values() if k["consumer"] == {"id": consumer["id"]}]
    assert len(keys) == 2
    basic = next(iter(ws.entities["basic-auths"].values()))
    assert len(basic["password"]) == 40 and basic["password"] != "basic_pass"
    assert {t["target"] for t in ws.entities["targets"].values()} == {
        "198.51.100.11:80",
        "198.51.100.12:8000",
    }
    before = {c: dict(v) for c, v in ws.entities.items()}
    hash_before = ws.configuration_hash()
    again = await apply(gateway, NESTED)  # the generated key, the hashed password: nothing changes
    assert again == {"changes": [], "summary": {"created": 0, "updated": 0, "deleted": 0}}
    assert {c: dict(v) for c, v in ws.entities.items()} == before and ws.configuration_hash() == hash_before


async def test_flat_form_references_by_name_and_id(gateway: GatewayStore) -> None:
    flat = """
_format_version: "3.0"
services:
- {name: a, host: a.example, id: 5bcbd3a7-030b-4310-bd1d-2721ff85d236}
routes:
- {name: by-name, paths: [/a], service: a}
- {name: by-id, paths: [/b], service: {id: 5bcbd3a7-030b-4310-bd1d-2721ff85d236}}
- {name: by-record, paths: [/c], service: {name: a}}
consumers:
- username: bob
keyauth_credentials:
- {key: k1, consumer: bob}
plugins:
- {name: correlation-id, route: by-name}
"""
    report = await apply(gateway, flat)
    assert report["summary"]["created"] == 7
    ws = await gateway.workspace("default")
    for name in ("by-name", "by-id", "by-record"):
        route = ws.find("routes", name)
        assert route is not None and route["service"] == {"id": "5bcbd3a7-030b-4310-bd1d-2721ff85d236"}
    assert ws.find("key-auths", "k1") is not None
    assert (await apply(gateway, flat))["summary"] == {"created": 0, "updated": 0, "deleted": 0}


async def test_changes_and_deletions_are_one_diff(gateway: GatewayStore) -> None:
    await apply(gateway, NESTED)
    ws = await gateway.workspace("default")
    service_id = ws.find("services", "example-service")["id"]  # type: ignore[index]
    changed = NESTED.replace("url: http://example.com", "url: http://other.example").replace(
        "  - target: 198.51.100.12\n    weight: 50\n", ""
    )
    dry = await apply(gateway, changed, dry_run=True)
    assert {(c["action"], c["entity_type"], c["entity_name"]) for c in dry["changes"]} == {
        ("update", "service", "example-service"),
        ("delete", "target", "198.51.100.12:8000"),
    }
    assert ws.find("services", "example-service")["host"] == "example.com"  # type: ignore[index]  # dry run
    report = await apply(gateway, changed)
    assert report["summary"] == {"created": 0, "updated": 1, "deleted": 1}
    service = ws.find("services", "example-service")
    assert service is not None and service["id"] == service_id and service["host"] == "other.example"
    assert len(ws.entities["targets"]) == 1
    # an empty file empties the workspace
    emptied = await apply(gateway, '_format_version: "3.0"\n')
    assert emptied["summary"]["deleted"] == 14 and not any(ws.entities.values())
    records = await gateway.store.list("KongService")
    assert records.items == []


async def test_dump_applies_back_with_no_change(gateway: GatewayStore) -> None:
    await apply(gateway, NESTED)
    await apply(gateway, EXAMPLE, workspace="other")
    for workspace in ("default", "other"):
        ws = await gateway.workspace(workspace)
        text = d.dump_yaml(d.export(ws))
        assert (await apply(gateway, text, workspace))["summary"] == {
            "created": 0,
            "updated": 0,
            "deleted": 0,
        }
    dumped = d.export(await gateway.workspace("default"))
    assert dumped["_format_version"] == "3.0" and dumped["_transform"] is False
    service = dumped["services"][0]
    assert (
        service["routes"][0]["name"] == "example-route"
        and service["routes"][0]["plugins"][0]["name"] == "cors"
    )
    assert "service" not in service["routes"][0]
    assert [p["name"] for p in service["plugins"]] == ["correlation-id"]
    assert {p["name"] for p in dumped["plugins"]} == {"rate-limiting"}  # bound to a consumer and a service
    assert len(dumped["consumers"][0]["keyauth_credentials"]) == 2
    # the dump of one workspace applied to a fresh one makes the same entities
    await apply(gateway, d.dump_yaml(dumped), workspace="copy")
    copy = await gateway.workspace("copy")
    assert copy.configuration_hash() != "0" * 32
    assert {c: len(v) for c, v in copy.entities.items()} == {
        c: len(v) for c, v in (await gateway.workspace("default")).entities.items()
    }


async def test_the_research_example_applies(gateway: GatewayStore) -> None:
    report = await apply(gateway, EXAMPLE, workspace="test-workspace")
    assert report["summary"] == {"created": 17, "updated": 0, "deleted": 0}
    ws = await gateway.workspace("test-workspace")
    route = ws.find("routes", "route-multi-entity-1")
    assert route is not None and route["service"] is None and route["https_redirect_status_code"] == 301
    plugin = next(iter(ws.entities["plugins"].values()))
    assert plugin["route"] == {"id": route["id"]} and plugin["config"] == {"minute": 10, "policy": "local"}
    cert = ws.entities["certificates"]["13c562a1-191c-4464-9b18-e5222b46035b"]
    assert cert["cert"] == "{vault://my-workspace-vault/cert}" and cert["snis"] == ["localhost"]
    assert ws.find("snis", "localhost")["certificate"] == {"id": cert["id"]}  # type: ignore[index]
    assert ws.find("vaults", "my-workspace-vault")["config"] == {"base64_decode": False, "prefix": "MY_SECRET_"}  # type: ignore[index]  # fmt: skip
    key = ws.find("keys", "test-key-jwk")
    assert key is not None and key["set"] == {"id": "a1b2c3d4-5678-90ab-cdef-1234567890ab"}
    assert ws.find("consumer_groups", "silver") is not None
    assert (await gateway.workspace("default")).entities["services"] == {}
    assert (await apply(gateway, EXAMPLE, workspace="test-workspace"))["summary"]["updated"] == 0
    dumped = d.export(ws)
    assert dumped["key_sets"][0]["keys"][0]["kid"] == "test-kid-123"
    assert dumped["certificates"][0]["snis"][0]["name"] == "localhost"
    assert (await apply(gateway, d.dump_yaml(dumped), "test-workspace"))["summary"] == {"created": 0, "updated": 0, "deleted": 0}  # fmt: skip


async def test_sections_isthmus_does_not_store_are_refused_by_name(gateway: GatewayStore) -> None:
    error = await refused(gateway, EXAMPLE + "oauth2_credentials: []\nvaultz: []\n")
    assert error.fields == {
        "oauth2_credentials": "'oauth2_credentials' entities are not supported by Isthmus's gateway",
        "vaultz": "unknown field",
    }
    assert (await gateway.workspace("default")).entities["services"] == {}
    bad = EXAMPLE.replace("name: env", "name: aws").replace('"kid":"test-kid-123"', '"kid":"other"')
    error = await refused(gateway, bad)
    assert error.fields is not None
    assert error.fields["vaults"] == [{"name": "vault 'aws' is not installed"}]
    assert error.fields["keys"] == [{"@entity": ["kid in jwk.kid must be equal to keys.kid"]}]


async def test_bad_entities_are_named_by_their_path_and_nothing_changes(gateway: GatewayStore) -> None:
    await apply(gateway, NESTED)
    ws = await gateway.workspace("default")
    before = ws.configuration_hash()
    bad = """
_format_version: "3.0"
services:
- name: ok
  host: ok.example
  routes:
  - name: fine
    paths: [/fine]
  - name: broken
    paths: [nope]
- name: no-host
routes:
- {name: orphan, paths: [/x], service: ghost}
consumers:
- keyauth_credentials: [{key: k}]
plugins:
- name: no-such-plugin
"""
    error = await refused(gateway, bad)
    assert error.fields == {
        "services": [
            {"routes": [None, {"paths": ["should start with: / (fixed path) or ~/ (regex path)"]}]},
            {"host": "required field missing"},
        ],
        "routes": [{"service": "invalid reference 'service: ghost' (no such entry in 'services')"}],
        "consumers": [
            {"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]}
        ],
        "plugins": [
            {"name": "plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property"}
        ],
    }
    assert "services[0].routes[1].paths[0]: should start with: /" in error.message
    assert "services[1].host: required field missing" in error.message
    assert "routes[0].service: invalid reference 'service: ghost'" in error.message
    flattened = error.flattened  # type: ignore[attr-defined]
    route_error = next(f for f in flattened if f["entity_name"] == "broken")
    assert route_error["entity_type"] == "route"
    assert route_error["errors"] == [{"type": "field", "field": "paths[0]", "message": "should start with: / (fixed path) or ~/ (regex path)"}]  # fmt: skip
    assert ws.configuration_hash() == before  # nothing stored


async def test_duplicates_within_the_file(gateway: GatewayStore) -> None:
    error = await refused(
        gateway,
        '_format_version: "3.0"\nservices:\n- {name: a, host: a}\n- {name: a, host: b}\n',
    )
    assert error.fields == {
        "services": [
            None,
            {"@entity": ["uniqueness violation: 'services' entity with name set to 'a' already declared"]},
        ]
    }


async def test_unsafe_or_malformed_files_are_refused(gateway: GatewayStore) -> None:
    alias = '_format_version: "3.0"\nservices:\n- &s {name: a, host: a}\n- *s\n'
    error = await refused(gateway, alias)
    assert "YAML anchors are not allowed" in error.message or "aliases" in error.message
    assert "_format_version: required field missing" in (await refused(gateway, "services: []\n")).message
    assert "unsupported _format_version '1.1'" in (await refused(gateway, '_format_version: "1.1"\n')).message
    unknown = await refused(gateway, '_format_version: "3.0"\nservicez: []\n')
    assert unknown.fields == {"servicez": "unknown field"}
    deep = '_format_version: "3.0"\nservices:\n- {name: a, host: a, tags: ' + "[" * 500 + "]" * 500 + "}\n"
    assert "nested more than" in (await refused(gateway, deep)).message
    implied = await refused(gateway, '_format_version: "3.0"\nservices:\n- name: a\n  host: a\n  routes:\n  - {paths: [/], service: b}\n')  # fmt: skip
    assert "implied by the entity's place" in implied.message


async def test_transform_false_keeps_hashed_passwords(gateway: GatewayStore) -> None:
    text = '_format_version: "3.0"\n_transform: false\nconsumers:\n- username: u\n  basicauth_credentials:\n  - {username: b, password: 0123456789abcdef}\n'  # fmt: skip
    await apply(gateway, text)
    ws = await gateway.workspace("default")
    assert next(iter(ws.entities["basic-auths"].values()))["password"] == "0123456789abcdef"


async def test_entities_without_a_name_keep_their_ids(gateway: GatewayStore) -> None:
    text = '_format_version: "3.0"\nservices:\n- host: a.example\n  routes:\n  - paths: [/a]\n  - paths: [/b]\n- host: b.example\n'  # fmt: skip
    await apply(gateway, text)
    ws = await gateway.workspace("default")
    ids = {c: set(v) for c, v in ws.entities.items() if v}
    assert (await apply(gateway, text))["summary"] == {"created": 0, "updated": 0, "deleted": 0}
    assert {c: set(v) for c, v in ws.entities.items() if v} == ids
    changed = await apply(gateway, text.replace("[/b]", "[/c]"))
    assert changed["summary"] == {"created": 1, "updated": 0, "deleted": 1}


async def test_select_tags_scope_the_sync(gateway: GatewayStore) -> None:
    await apply(gateway, '_format_version: "3.0"\nservices:\n- name: manual\n  host: m.example\n  routes:\n  - {name: manual-route, paths: [/m]}\n')  # fmt: skip
    team = """
_format_version: "3.0"
_info:
  select_tags: [team-a]
  defaults:
    service: {retries: 9}
services:
- name: a1
  host: a1.example
  tags: [api]
  plugins:
  - name: cors
- name: a2
  host: a2.example
  retries: 1
"""
    report = await apply(gateway, team)
    assert report["summary"] == {"created": 3, "updated": 0, "deleted": 0}  # "manual" is outside team-a: kept
    ws = await gateway.workspace("default")
    a1, a2 = ws.find("services", "a1"), ws.find("services", "a2")
    assert a1 is not None and a1["tags"] == ["api", "team-a"] and a1["retries"] == 9
    assert a2 is not None and a2["retries"] == 1
    assert ws.find("services", "manual") is not None
    assert (await apply(gateway, team))["summary"] == {"created": 0, "updated": 0, "deleted": 0}
    dumped = d.export(ws, ("team-a",))
    assert sorted(s["name"] for s in dumped["services"]) == ["a1", "a2"] and dumped["_info"] == {
        "select_tags": ["team-a"]
    }
    assert (await apply(gateway, d.dump_yaml(dumped)))["summary"] == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
    }
    # removing a2 from the file deletes it; "manual" stays
    report = await apply(gateway, team.split("- name: a2")[0])
    assert (
        report["summary"] == {"created": 0, "updated": 0, "deleted": 1} and ws.find("services", "a2") is None
    )
    assert ws.find("services", "manual") is not None
    # a name taken outside the tags is a conflict, and nothing changes
    error = await refused(gateway, team + "- {name: manual, host: x.example}\n")
    assert "uniqueness violation: 'services' entity with name set to 'manual' exists outside _info.select_tags" in error.message  # fmt: skip
    # a tagged service with an untagged route cannot go; a tagged one's untagged plugin goes with it
    await apply(gateway, '_format_version: "3.0"\n_info: {select_tags: [team-a]}\nservices:\n- {name: a1, host: a1.example}\n')  # fmt: skip
    a1_id = ws.find("services", "a1")["id"]  # type: ignore[index]
    await gateway.create(
        "default", "routes", {"name": "hand-made", "paths": ["/h"], "service": {"id": a1_id}}
    )
    error = await refused(gateway, '_format_version: "3.0"\n_info: {select_tags: [team-a]}\n')
    assert "an existing 'routes' entity references this 'services' entity" in error.message
    await gateway.delete("default", "routes", "hand-made")
    await gateway.create("default", "plugins", {"name": "cors", "service": {"id": a1_id}})
    report = await apply(gateway, '_format_version: "3.0"\n_info: {select_tags: [team-a]}\n')
    assert report["summary"]["deleted"] == 2 and ws.entities["plugins"] == {}
    assert ws.find("services", "manual") is not None
    bad = await refused(gateway, '_format_version: "3.0"\n_info: {select_tags: "x", other: 1}\n')
    assert bad.fields == {"_info": {"select_tags": "expected an array of tags", "other": "unknown field"}}
