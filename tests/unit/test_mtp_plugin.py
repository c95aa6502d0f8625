"""MeshTrafficPermission is a policy plug-in like the others, and ``isthmus.resources`` does not depend on
``isthmus.policies`` (the registry of every type is assembled above both, in :mod:`isthmus.catalog`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.evolve import evolve
from isthmus.policies.catalog import plugin_for, plugins
from isthmus.policies.meshtrafficpermission.plugin import PLUGIN, inbound_permissions
from isthmus.policies.plugin import PolicyInputs
from isthmus.resources.registry import load_documents, parse_document

SRC = Path(__file__).resolve().parents[2] / "src" / "isthmus"
REG = default_registry()

MESH = """
type: Mesh
name: m
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: Dataplane
mesh: m
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - {port: 20002, servicePort: 8002, tags: {kuma.io/service: backend, kuma.io/protocol: http}}
---
type: MeshTrafficPermission
mesh: m
name: allow-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: m
name: deny-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
"""


def _context(text: str = MESH) -> MeshContext:
    rs = [parse_document(d, REG) for d in load_documents(text)]
    return build_mesh_context(
        rs[0],
        [r for r in rs if r.type.kind == "Dataplane"],
        [r for r in rs if r.type.is_policy],
    )


def test_mesh_traffic_permission_is_a_catalog_plug_in_and_runs_first() -> None:
    assert plugin_for("MeshTrafficPermission") is PLUGIN
    assert plugins()[0] is PLUGIN
    assert [t.kind for t in REG.public()][:3] == ["Mesh", "Dataplane", "MeshTrafficPermission"]
    assert REG.lookup("mtp") is PLUGIN.resource_type
    assert PLUGIN.resource_type.is_policy


def test_the_plug_in_sets_each_inbounds_permissions() -> None:
    ctx = _context()
    ir = build_proxy_ir(ctx, "backend-1", Identity("chain", "key"))
    (listener,) = ir.inbounds
    dp = ctx.dataplanes["backend-1"]
    expected = inbound_permissions(
        "m", ctx.policies_of("MeshTrafficPermission"), dp, dp.spec.networking.inbound[0]
    )  # type: ignore[attr-defined]
    assert listener.permissions is not None
    assert listener.permissions.allow == expected.allow
    assert listener.permissions.policies == ("deny-all", "allow-web")
    # run alone on an inbound without permissions, the plug-in computes the same
    bare = evolve(ir, inbounds=(evolve(listener, permissions=None),))
    redone = PLUGIN.apply(bare, PolicyInputs(ctx, dp, ctx.policies_of("MeshTrafficPermission")))
    assert redone.inbounds[0].permissions == listener.permissions


def test_without_mtls_no_permissions_are_enforced() -> None:
    ctx = _context(
        MESH.replace("mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}\n", "")
    )
    ir = build_proxy_ir(ctx, "backend-1", None)
    assert ir.inbounds[0].permissions is None


def test_describe_lists_the_rules_with_their_origins() -> None:
    ctx = _context()
    dp = ctx.dataplanes["backend-1"]
    described = PLUGIN.describe(PolicyInputs(ctx, dp, ctx.policies_of("MeshTrafficPermission")))
    (inbound,) = described["inbounds"]
    assert inbound["port"] == 20002
    assert [(r["policy"], r["action"]) for r in inbound["rules"]] == [
        ("deny-all", "Deny"),
        ("allow-web", "Allow"),
    ]
    assert inbound["origins"] == [
        {"kind": "MeshTrafficPermission", "policy": "deny-all", "section": "from[0]"},
        {"kind": "MeshTrafficPermission", "policy": "allow-web", "section": "from[0]"},
    ]
    assert "conf" not in inbound  # rules, not a merged configuration


def _isthmus_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("isthmus")}


def test_resources_do_not_import_policies() -> None:
    """Neither at module level nor inside functions: the dependency goes one way, policies -> resources."""
    upward = (
        "isthmus.policies",
        "isthmus.catalog",
        "isthmus.ir",
        "isthmus.context",
        "isthmus.xds",
        "isthmus.cp",
    )
    offenders = {
        f"{path.relative_to(SRC)}: {module}"
        for path in (SRC / "resources").rglob("*.py")
        for module in _isthmus_imports(path)
        if module.startswith(upward)
    }
    assert offenders == set()


def test_importing_the_resources_package_loads_no_policy_module() -> None:
    code = (
        "import sys, importlib, pkgutil, isthmus.resources as r\n"
        "for m in pkgutil.iter_modules(r.__path__): importlib.import_module(f'isthmus.resources.{m.name}')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('isthmus.policies', 'isthmus.catalog'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
