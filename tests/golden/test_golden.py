"""Golden files at two stages: resources -> IR and IR -> xDS; every xDS output also passes ``envoy --mode validate``.

Each ``cases/<case>.input.yaml`` holds the resources of one mesh. For every Dataplane in it the test renders
``<case>.<dataplane>.ir.yaml`` and ``<case>.<dataplane>.xds.yaml``. ``pytest --update-golden`` rewrites them;
outputs with no input are reported as orphans.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate

HERE = Path(__file__).parent
CASES = HERE / "cases"
CERTS = HERE / "certs"
REG = default_registry()
PLACEHOLDERS = {"ca.pem": "<ca.pem>", "cert.pem": "<cert.pem>", "key.pem": "<key.pem>"}


def _cert(name: str) -> str:
    return (CERTS / name).read_text()


def _load(case: Path) -> tuple[Resource, list[Resource], list[Resource]]:
    resources = [parse_document(d, REG) for d in load_documents(case.read_text())]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    policies = [r for r in resources if r.type.is_policy]
    return mesh, dps, policies


def _outputs() -> list[tuple[Path, str]]:
    out = []
    for case in sorted(CASES.glob("*.input.yaml")):
        _, dps, _ = _load(case)
        out.extend((case, dp.name) for dp in dps)
    return out


def _render(case: Path, dp_name: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    mesh, dps, policies = _load(case)
    mtls = mesh.spec.enabled_backend is not None  # type: ignore[attr-defined]
    ctx = build_mesh_context(mesh, dps, policies, _cert("ca.pem") if mtls else "")
    identity = Identity(_cert("cert.pem"), _cert("key.pem")) if mtls else None
    ir = build_proxy_ir(ctx, dp_name, identity)
    assert Snapshot.build(translate(ir)).consistency_errors() == []  # the reconciler relies on this
    ir_data = _placeholder(json.loads(json.dumps(dataclasses.asdict(ir), default=str)))
    ir_text = yaml.safe_dump(ir_data, sort_keys=True)
    xds = {
        type_url: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs]
        for type_url, msgs in translate(ir).items()
    }
    # MessageToDict yields OrderedDicts inside Any fields; a JSON round trip makes plain data for YAML.
    return ir_text, json.loads(json.dumps(xds))


# endpoint fields that only MeshLoadBalancingStrategy affinityTags set (isthmus.ingress.affinity): left out when unset
UNSET_IN_GOLDEN: dict[str, Any] = {"sub_zone": "", "locality_weight": 0}


def _placeholder(node: Any) -> Any:
    """The same data with the fixed PEM blocks replaced by short tokens, so golden files stay readable."""
    if isinstance(node, dict):
        return {k: _placeholder(v) for k, v in node.items() if UNSET_IN_GOLDEN.get(k, ...) != v}
    if isinstance(node, list):
        return [_placeholder(v) for v in node]
    if isinstance(node, str):
        for name, token in PLACEHOLDERS.items():
            node = node.replace(_cert(name), token)
    return node


def _check(path: Path, actual: str, update: bool) -> None:
    if update or not path.exists():
        path.write_text(actual)
        if not update:
            pytest.fail(f"golden file {path.name} did not exist; written now, review and commit it")
        return
    assert actual == path.read_text(), f"{path.name} differs; run pytest --update-golden and review the diff"


@pytest.mark.parametrize(
    ("case", "dp"), _outputs(), ids=lambda v: v.name.split(".")[0] if isinstance(v, Path) else v
)
def test_golden(case: Path, dp: str, update_golden: bool, tmp_path: Path) -> None:
    stem = case.name.removesuffix(".input.yaml")
    ir_text, xds = _render(case, dp)
    _check(CASES / f"{stem}.{dp}.ir.yaml", ir_text, update_golden)
    xds_text = yaml.safe_dump(_placeholder(xds), sort_keys=True, width=120)
    _check(CASES / f"{stem}.{dp}.xds.yaml", xds_text, update_golden)
    _envoy_validate(xds, tmp_path)


def test_no_orphaned_golden_files() -> None:
    expected = {
        f"{c.name.removesuffix('.input.yaml')}.{dp}.{kind}.yaml"
        for c, dp in _outputs()
        for kind in ("ir", "xds")
    }
    present = {p.name for p in CASES.glob("*.yaml") if not p.name.endswith(".input.yaml")}
    assert present - expected == set(), "orphaned golden outputs"


# -- envoy --mode validate ----------------------------------------------------------------------------------------
def _static_bootstrap(xds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Turn a dynamic snapshot into an equivalent static bootstrap: EDS->STATIC, RDS->inline, SDS->static."""
    cla = {e["cluster_name"]: e for e in xds[types.ENDPOINT]}
    routes = {r["name"]: r for r in xds[types.ROUTE]}
    clusters = []
    for c in json.loads(json.dumps(xds[types.CLUSTER])):
        if c.get("type") == "EDS":
            c["type"] = "STATIC"
            c.pop("eds_cluster_config", None)
            c["load_assignment"] = cla[c["name"]]
        clusters.append(c)
    listeners = json.loads(json.dumps(xds[types.LISTENER]))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "rds" in node and "route_config_name" in node["rds"]:
                node["route_config"] = routes[node.pop("rds")["route_config_name"]]
            node.pop("sds_config", None)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        return node

    return {
        "static_resources": {
            "listeners": walk(listeners),
            "clusters": walk(clusters),
            "secrets": xds[types.SECRET],
        }
    }


def _envoy_validate(xds: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_static_bootstrap(xds)))
    proc = subprocess.run(
        [
            str(find_envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(path),
            "-l",
            "error",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
