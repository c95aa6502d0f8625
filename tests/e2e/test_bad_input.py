"""Bad input against a real control plane (``isthmus cp run`` with a SQLite store): the corpus of
``tests/corpus`` over REST and through ``isthmus apply``, alias bombs, deep nesting, oversized bodies and the
issue-6 regressions. Every document is refused with a 4xx naming the field, nothing is stored, and the control
plane keeps answering (also after a restart on the same store)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from isthmus.catalog import default_registry
from isthmus.cli.main import app
from isthmus.resources.registry import Scope
from tests.e2e.harness import ISTHMUS, ControlPlane

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
INDEX: dict[str, dict[str, str]] = yaml.safe_load((CORPUS / "index.yaml").read_text())
MIB = 1 << 20

MESH = {"type": "Mesh", "name": "default"}
DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "servicePort": 8001, "tags": {"kuma.io/service": "web"}}],
    },
}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("bad-input"))
    try:
        plane.start()
        resp = plane.http.put("/meshes/default", json=MESH)
        assert resp.status_code in (200, 201), resp.text
        yield plane
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- control plane log ---\n{plane.proc.log() if plane.proc else ''}"
        ) from None
    finally:
        plane.stop()
        plane.http.close()


def path_of(doc: Any) -> str:
    """The REST path a document would be PUT to (as ``isthmus apply`` computes it)."""
    registry = default_registry()
    rtype = registry.kind(doc.get("type")) if isinstance(doc.get("type"), str) else None
    rtype = rtype or registry.kind("MeshTimeout")
    assert rtype is not None
    name = doc.get("name") if isinstance(doc.get("name"), str) and doc.get("name") else "unnamed"
    if rtype.kind == "Mesh":
        return f"/meshes/{quote(name, safe='')}"
    if rtype.scope is Scope.GLOBAL:  # Zone, ZoneIngress, HostnameGenerator, ...: /{plural}/{name}
        return f"/{rtype.plural}/{quote(name, safe='')}"
    mesh = doc.get("mesh") if isinstance(doc.get("mesh"), str) and doc.get("mesh") else "default"
    return f"/meshes/{quote(mesh, safe='')}/{rtype.plural}/{quote(name, safe='')}"


def stored(cp: ControlPlane) -> dict[str, int]:
    """How many resources of each kind the control plane holds (meshes, and each kind in mesh default)."""
    counts = {"Mesh": cp.http.get("/meshes").json()["total"]}
    for rtype in default_registry().public():
        if rtype.kind != "Mesh":
            path = f"/{rtype.plural}" if rtype.scope is Scope.GLOBAL else f"/meshes/default/{rtype.plural}"
            resp = cp.http.get(path)
            assert resp.status_code == 200, resp.text
            counts[rtype.kind] = resp.json()["total"]
    return counts


def assert_alive(cp: ControlPlane) -> None:
    assert cp.proc is not None and cp.proc.proc is not None
    assert cp.proc.proc.poll() is None, cp.proc.log()
    assert cp.http.get("/").status_code == 200


def refused_naming(resp: httpx.Response, field: str, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code}: {resp.text}"
    problem: dict[str, Any] = resp.json()
    fields = [p["field"] for p in problem.get("invalid_parameters", [])]
    assert field in fields, f"expected an error on {field!r}: {problem}"
    return problem


# -- the corpus over REST -----------------------------------------------------------------------------------------
def test_rest_refuses_the_whole_corpus_and_stores_nothing(cp: ControlPlane) -> None:
    before = stored(cp)
    for name, entry in sorted(INDEX.items()):
        text = (CORPUS / name).read_text()
        doc = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        content_type = "application/json" if name.endswith(".json") else "application/yaml"
        path = path_of(doc)
        resp = cp.http.put(path, content=text.encode(), headers={"content-type": content_type})
        assert 400 <= resp.status_code < 500, f"{name}: {resp.status_code} {resp.text}"
        problem = resp.json()
        fields = [p["field"] for p in problem.get("invalid_parameters", [])]
        assert entry["field"] in fields, f"{name}: expected an error on {entry['field']!r}, got {problem}"
        if path != "/meshes/default":
            assert cp.http.get(path).status_code == 404, f"{name}: {path} was stored"
    assert stored(cp) == before
    assert_alive(cp)


# -- the corpus through isthmus apply -----------------------------------------------------------------------------
def test_apply_refuses_the_whole_corpus_with_one_line_naming_the_field(cp: ControlPlane) -> None:
    runner = CliRunner()
    before = stored(cp)
    for name, entry in sorted(INDEX.items()):
        result = runner.invoke(
            app,
            ["apply", "-f", str(CORPUS / name)],
            env={"ISTHMUS_CP_ADDRESS": cp.url},
            catch_exceptions=False,
        )
        assert result.exit_code == 1, f"{name}: exit {result.exit_code}\n{result.output}"
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{name}: {result.stderr!r}"
        assert f"{entry['field']}: " in lines[0] or entry["field"] == "", f"{name}: {lines[0]}"
    assert stored(cp) == before
    assert_alive(cp)


def test_apply_in_a_real_process(cp: ControlPlane) -> None:
    result = subprocess.run(
        [
            *ISTHMUS,
            "apply",
            "-f",
            str(CORPUS / "dataplane-tag-value-with-space.yaml"),
            "--cp-address",
            cp.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and "networking.inbound[0].tags: " in result.stderr
    assert "John Smith" in result.stderr


# -- regressions of issue 6 ---------------------------------------------------------------------------------------
def test_owner_john_smith_is_refused_and_the_control_plane_survives_a_restart(cp: ControlPlane) -> None:
    doc = json.loads(json.dumps(DATAPLANE))
    doc["networking"]["inbound"][0]["tags"]["owner"] = "John Smith"
    refused_naming(cp.http.put("/meshes/default/dataplanes/web-1", json=doc), "networking.inbound[0].tags")
    assert cp.http.get("/meshes/default/dataplanes/web-1").status_code == 404
    ok = cp.http.put("/meshes/default/dataplanes/web-1", json=DATAPLANE)
    assert ok.status_code == 201, ok.text
    cp.stop()
    cp.start()
    assert_alive(cp)
    assert cp.http.get("/meshes/default/dataplanes/web-1").status_code == 200
    assert cp.http.delete("/meshes/default/dataplanes/web-1").status_code == 200


def test_a_9000y_certificate_lifetime_is_refused(cp: ControlPlane) -> None:
    mesh = {
        "type": "Mesh",
        "name": "long-lived",
        "mtls": {
            "enabledBackend": "ca-1",
            "backends": [
                {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "9000y"}}}
            ],
        },
    }
    problem = refused_naming(
        cp.http.put("/meshes/long-lived", json=mesh), "mtls.backends[0].dpCert.rotation.expiration"
    )
    assert "9000y" in problem["detail"]
    assert cp.http.get("/meshes/long-lived").status_code == 404
    assert_alive(cp)


@pytest.mark.parametrize("depth", [401, 100_000])
@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_deep_nesting_is_a_400_not_a_500(cp: ControlPlane, depth: int, kind: str) -> None:
    if kind == "json":
        body = '{"type": "Mesh", "name": "deep", "logging": ' + "[" * depth + "]" * depth + "}"
    else:
        body = "type: Mesh\nname: deep\nlogging: " + "[" * depth + "]" * depth + "\n"
    resp = cp.http.put("/meshes/deep", content=body.encode(), headers={"content-type": f"application/{kind}"})
    assert resp.status_code == 400, resp.text
    assert "nest" in resp.json()["detail"]
    assert cp.http.get("/meshes/deep").status_code == 404
    assert_alive(cp)


def test_a_billion_laughs_is_a_400(cp: ControlPlane) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    body = "type: Mesh\nname: laughs\nlogging:\n" + "\n".join("  " + line for line in lines) + "\n"
    resp = cp.http.put("/meshes/laughs", content=body.encode(), headers={"content-type": "application/yaml"})
    assert resp.status_code == 400, resp.text
    assert "not allowed" in resp.json()["detail"]
    assert cp.http.get("/meshes/laughs").status_code == 404
    assert_alive(cp)


def test_a_2_mib_body_is_a_413(cp: ControlPlane) -> None:
    doc = {**MESH, "name": "huge", "logging": {"padding": "x" * (2 * MIB)}}
    resp = cp.http.put("/meshes/huge", json=doc)
    assert resp.status_code == 413, resp.text
    problem = resp.json()
    assert problem["status"] == 413 and "limit is 1048576 bytes" in problem["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield json.dumps({**MESH, "name": "huge"})[:-1].encode() + b', "logging": {"padding": "'
        for _ in range(32):
            yield b"x" * (64 * 1024)
        yield b'"}}'

    resp = cp.http.put("/meshes/huge", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert cp.http.get("/meshes/huge").status_code == 404
    assert_alive(cp)


def test_files_for_apply_and_dp_run_obey_the_same_rules(cp: ControlPlane, tmp_path: Path) -> None:
    runner = CliRunner()
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(DATAPLANE) + "# " + "x" * (2 * MIB) + "\n")
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text(yaml.safe_dump(DATAPLANE) + "metrics: &m {a: 1}\nprobes: *m\n")
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps(DATAPLANE)[:-1] + ', "metrics": ' + "[" * 1000 + "]" * 1000 + "}")
    expected = {big: "limit is 1048576 bytes", aliases: "YAML anchors are not allowed", deep: "nested"}
    for file, fragment in expected.items():
        result = runner.invoke(app, ["apply", "-f", str(file)], env={"ISTHMUS_CP_ADDRESS": cp.url})
        assert result.exit_code == 1, result.output
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
        dp = subprocess.run(
            [*ISTHMUS, "dp", "run", "--cp-address", cp.url, "--dataplane-file", str(file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert dp.returncode == 1, dp
        assert dp.stderr.startswith(f"Error: --dataplane-file {file}: "), dp.stderr
        assert dp.stderr.count("\n") == 1 and fragment.split()[0] in dp.stderr, dp.stderr
    assert cp.http.get("/meshes/default/dataplanes/web-1").status_code == 404
    assert_alive(cp)
