"""``GET /meshes/{mesh}/dataplanes/{name}/_rules`` (Kuma's InspectRules shape) and ``isthmus inspect dataplane
NAME --rules`` against a real control plane process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from isthmus.cli.main import app
from tests.e2e.harness import ControlPlane

MESH = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"]}
DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "dp-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "foo"}}],
        "outbound": [{"port": 10001, "tags": {"kuma.io/service": "bar"}}],
    },
}
# Kuma's overriding_meshtimeout example (pkg/api-server/testdata/resources/inspect/dataplanes/_rules)
POLICIES: list[dict[str, Any]] = [
    {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "default",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "idleTimeout": "20s",
                        "connectionTimeout": "2s",
                        "http": {"requestTimeout": "10s"},
                    },
                }
            ],
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "idleTimeout": "20s",
                        "connectionTimeout": "2s",
                        "http": {"requestTimeout": "5s"},
                    },
                }
            ],
        },
    },
    {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "override",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "foo"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "foo"},
                    "default": {"http": {"requestTimeout": "15s"}},
                },
                {
                    "targetRef": {"kind": "MeshService", "name": "bar"},
                    "default": {"http": {"requestTimeout": "20s"}},
                },
            ],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "20s"}}],
        },
    },
    # a gateway-only policy (Kuma's default for gateways): not a rule of this sidecar
    {
        "type": "MeshRetry",
        "mesh": "default",
        "name": "gateways-only",
        "spec": {
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 5}}}],
        },
    },
]

runner = CliRunner()


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("rules")).start()
    try:
        assert plane.http.put("/meshes/default", json=MESH).status_code in (200, 201)
        resp = plane.http.put("/meshes/default/dataplanes/dp-1", json=DATAPLANE)
        assert resp.status_code in (200, 201), resp.text
        for doc in POLICIES:
            plural = {"MeshTimeout": "meshtimeouts", "MeshRetry": "meshretries"}[doc["type"]]
            resp = plane.http.put(f"/meshes/default/{plural}/{doc['name']}", json=doc)
            assert resp.status_code in (200, 201), resp.text
        yield plane
    finally:
        plane.stop()


def test_rules_in_kumas_shape(cp: ControlPlane) -> None:
    resp = cp.http.get("/meshes/default/dataplanes/dp-1/_rules")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert set(doc) == {"resource", "rules", "httpMatches"}
    assert doc["resource"] == {"type": "Dataplane", "mesh": "default", "name": "dp-1", "labels": {}}
    assert [r["type"] for r in doc["rules"]] == ["MeshTimeout"]  # the gateway-only MeshRetry is left out
    [rule] = doc["rules"]
    assert {"type", "toRules", "toResourceRules", "fromRules", "inboundRules", "warnings"} <= set(rule)
    by_matchers = {json.dumps(r["matchers"]): r for r in rule["toRules"]}
    bar = by_matchers[json.dumps([{"key": "kuma.io/service", "value": "bar", "not": False}])]
    assert bar["conf"] == {"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "20s"}}
    assert [o["name"] for o in bar["origin"]] == ["default", "override"]  # merge order
    assert by_matchers["[]"]["conf"]["http"] == {"requestTimeout": "10s"}
    [from_rule] = rule["fromRules"]
    assert from_rule["inbound"] == {"port": 8080, "tags": {"kuma.io/service": "foo"}}
    assert from_rule["rules"][0]["conf"]["connectionTimeout"] == "20s"
    [inbound] = rule["inboundRules"]
    assert [r["origin"][0]["resourceMeta"]["name"] for r in inbound["rules"]] == ["default", "override"]
    assert rule["toResourceRules"][0]["resourceMeta"]["type"] == "Mesh"


def test_rules_declared_in_openapi_and_404(cp: ControlPlane) -> None:
    spec = cp.http.get("/openapi.json").json()
    op = spec["paths"]["/meshes/{mesh}/dataplanes/{name}/_rules"]["get"]
    assert {"200", "404"} <= set(op["responses"])
    missing = cp.http.get("/meshes/default/dataplanes/nope/_rules")
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]
    assert cp.http.get("/meshes/nomesh/dataplanes/dp-1/_rules").status_code == 404


def test_cli_inspect_rules(cp: ControlPlane) -> None:
    env = {"ISTHMUS_CP_ADDRESS": cp.url}
    text = runner.invoke(app, ["inspect", "dataplane", "dp-1", "--rules"], env=env, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "MeshTimeout" in text.stdout
    assert (
        'to kuma.io/service=bar: {"connectionTimeout":"2s","http":{"requestTimeout":"20s"},"idleTimeout":"20s"}'
        in (text.stdout)
    )
    assert "from: default, override" in text.stdout
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        out = runner.invoke(
            app, ["inspect", "dataplane", "dp-1", "--rules", "-o", fmt], env=env, catch_exceptions=False
        )
        assert out.exit_code == 0, out.output
        assert load(out.stdout) == cp.http.get("/meshes/default/dataplanes/dp-1/_rules").json()
    both = runner.invoke(app, ["inspect", "dataplane", "dp-1", "--rules", "--policies"], env=env)
    assert both.exit_code == 1
    assert "cannot be used together" in both.stderr
