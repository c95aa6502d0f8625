"""Golden cases per policy plug-in, kept beside the plug-in as Kuma keeps them.

Each ``src/isthmus/policies/<kind>/testdata/<case>.input.yaml`` holds one mesh: a Mesh, Dataplanes and several
policies of that kind at different targetRef levels and names (and, where the case needs them, policies of other
kinds, e.g. the MeshHTTPRoute a MeshTimeout is attached to). ``<case>.golden.yaml`` holds, per Dataplane:

``describe``
    what the plug-in resolves for each inbound and outbound: the merged conf and its origins, in merge order
    (what ``GET .../_policies`` and ``isthmus inspect --policies`` show for that kind);
``ir``
    the parts of the IR that this kind's policies change: the proxy's IR is built with every policy of the case
    and again without the policies of this kind, and each inbound, outbound, cluster, endpoint set or patch that
    differs is shown whole, by name (fields not set left out; ``null``: the policies removed it).

``pytest --update-golden`` rewrites the golden files; a case without one fails once and writes it.
"""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.policies.catalog import plugins
from isthmus.policies.plugin import PolicyInputs
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "src" / "isthmus" / "policies"
CERTS = ROOT / "tests" / "golden" / "certs"
REG = default_registry()


def _cases() -> list[Path]:
    return sorted(POLICIES.glob("*/testdata/*.input.yaml"))


def _kind(case: Path) -> str:
    package = case.parent.parent.name
    for plugin in plugins():
        if plugin.resource_type.kind.lower() == package:
            return plugin.resource_type.kind
    raise AssertionError(f"{package} is not a policy plug-in package")


def _cert(name: str) -> str:
    return (CERTS / name).read_text()


def _ir(mesh: Resource, dps: list[Resource], policies: list[Resource], dp: str) -> Any:
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    mtls = spec.enabled_backend is not None
    ctx = build_mesh_context(mesh, dps, policies, _cert("ca.pem") if mtls else "")
    ir = build_proxy_ir(ctx, dp, Identity(_cert("cert.pem"), _cert("key.pem")) if mtls else None)
    assert Snapshot.build(translate(ir)).consistency_errors() == []
    return ctx, ir


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _compact(node: Any) -> Any:
    """Plain data without the fields that are not set (``None``) or empty."""
    if isinstance(node, dict):
        kept = {k: _compact(v) for k, v in node.items()}
        return {k: v for k, v in kept.items() if v is not None and v != [] and v != {}}
    if isinstance(node, list):
        return [_compact(v) for v in node]
    return node


def _key(element: Any, index: int) -> str:
    for field in ("name", "cluster"):
        if isinstance(element, dict) and isinstance(element.get(field), str) and element[field]:
            return str(element[field])
    return str(index)


def changed_parts(ir: Any, without: Any) -> dict[str, Any]:
    """Per IR section (inbounds, outbounds, clusters, endpoints, patches), the elements that differ between the
    IR with the kind's policies and without them, whole (in the IR's order, so route order shows), by name;
    ``null`` for an element the policies removed. Secrets are left out."""
    got, base = _compact(_plain(ir)), _compact(_plain(without))
    out: dict[str, Any] = {}
    for section in ("inbounds", "outbounds", "clusters", "endpoints", "patches"):
        new = {_key(e, i): e for i, e in enumerate(got.get(section, []))}
        old = {_key(e, i): e for i, e in enumerate(base.get(section, []))}
        diff = {k: v for k, v in new.items() if old.get(k) != v}
        diff.update({k: None for k in old if k not in new})
        if diff:
            out[section] = diff
    return out


def render(case: Path) -> str:
    kind = _kind(case)
    resources = [parse_document(d, REG) for d in load_documents(case.read_text())]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    policies = [r for r in resources if r.type.is_policy]
    assert any(p.type.kind == kind for p in policies), f"{case.name} has no {kind}"
    plugin = next(p for p in plugins() if p.resource_type.kind == kind)
    out: dict[str, Any] = {}
    for dp in sorted(dps, key=lambda d: d.name):
        ctx, ir = _ir(mesh, dps, policies, dp.name)
        _, without = _ir(mesh, dps, [p for p in policies if p.type.kind != kind], dp.name)
        described = plugin.describe(PolicyInputs(ctx, dp, ctx.policies_of(kind)))
        out[dp.name] = {"describe": json.loads(json.dumps(described)), "ir": changed_parts(ir, without)}
    return yaml.safe_dump(out, sort_keys=False, width=120)


@pytest.mark.parametrize(
    "case", _cases(), ids=lambda c: f"{c.parent.parent.name}/{c.name.removesuffix('.input.yaml')}"
)
def test_plugin_golden(case: Path, update_golden: bool) -> None:
    actual = render(case)
    golden = case.with_name(case.name.removesuffix(".input.yaml") + ".golden.yaml")
    if update_golden or not golden.exists():
        golden.write_text(actual)
        if not update_golden:
            pytest.fail(f"{golden.name} did not exist; written now, review and commit it")
        return
    assert actual == golden.read_text(), f"{golden} differs; run pytest --update-golden and review the diff"


def test_every_plugin_has_golden_cases() -> None:
    packages = {p.resource_type.kind.lower() for p in plugins()}
    covered = {c.parent.parent.name for c in _cases()}
    assert packages - covered == set()


def test_no_orphaned_golden_files() -> None:
    goldens = set(POLICIES.glob("*/testdata/*.golden.yaml"))
    expected = {c.with_name(c.name.removesuffix(".input.yaml") + ".golden.yaml") for c in _cases()}
    assert goldens - expected == set()
