"""The policy engine: merge patches, Kuma's precedence for to/from items, and MeshTimeout's IR."""

from __future__ import annotations

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.policies.engine import merge_patch, resolve_from, resolve_to
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document

REG = default_registry()

BASE = """
type: Mesh
name: m
---
type: Dataplane
mesh: m
name: web-1
labels: {team: a}
networking:
  address: 127.0.0.1
  inbound:
  - port: 20001
    servicePort: 8001
    tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
---
type: Dataplane
mesh: m
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - port: 20002
    servicePort: 8002
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
"""


def timeout(name: str, top: str, to: str, value: str) -> str:
    return f"""
---
type: MeshTimeout
mesh: m
name: {name}
spec:
  targetRef: {top}
  to:
  - targetRef: {to}
    default: {{http: {{requestTimeout: {value}}}}}
"""


def load(extra: str) -> tuple[list[Resource], list[Resource], Resource]:
    rs = [parse_document(d, REG) for d in load_documents(BASE + extra)]
    dps = [r for r in rs if r.type.kind == "Dataplane"]
    return dps, [r for r in rs if r.type.is_policy], rs[0]


def test_merge_patch_merges_objects_and_replaces_lists() -> None:
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}
    assert merge_patch(base, {"a": {"y": 3}, "l": [9], "k": None}) == {"a": {"x": 1, "y": 3}, "l": [9]}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}  # inputs untouched


@pytest.mark.parametrize(
    ("policies", "expected", "winner"),
    [
        # top-level kind first: Dataplane (2) over Mesh (1), whatever the names
        (
            timeout("a", "{kind: Mesh}", "{kind: Mesh}", "5s")
            + timeout("b", "{kind: Dataplane, name: web-1}", "{kind: Mesh}", "1s"),
            "1s",
            "b",
        ),
        # same top-level kind: the to item's kind decides (MeshService over Mesh)
        (
            timeout("a", "{kind: Mesh}", "{kind: MeshService, name: backend}", "2s")
            + timeout("b", "{kind: Mesh}", "{kind: Mesh}", "5s"),
            "2s",
            "a",
        ),
        # MeshService (5) over MeshSubset (3) over Dataplane (2)
        (
            timeout("a", "{kind: MeshSubset, tags: {version: v1}}", "{kind: Mesh}", "3s")
            + timeout("b", "{kind: MeshService, name: web}", "{kind: Mesh}", "4s")
            + timeout("c", "{kind: Dataplane, labels: {team: a}}", "{kind: Mesh}", "9s"),
            "4s",
            "b",
        ),
        # full tie: the lexicographically smaller name wins
        (
            timeout("bbb", "{kind: Mesh}", "{kind: Mesh}", "5s")
            + timeout("aaa", "{kind: Mesh}", "{kind: Mesh}", "7s"),
            "7s",
            "aaa",
        ),
    ],
)
def test_to_precedence(policies: str, expected: str, winner: str) -> None:
    dps, pols, _ = load(policies)
    resolved = resolve_to(pols, dps[0], "backend")
    assert resolved.conf["http"]["requestTimeout"] == expected
    assert resolved.origins[-1].policy == winner


def test_to_items_only_apply_to_their_destination_and_selected_proxies() -> None:
    dps, pols, _ = load(
        timeout("only-db", "{kind: Mesh}", "{kind: MeshService, name: db}", "1s")
        + timeout("other-dp", "{kind: Dataplane, name: backend-1}", "{kind: Mesh}", "2s")
    )
    web = dps[0]
    assert resolve_to(pols, web, "backend").empty
    assert resolve_to(pols, web, "db").conf == {"http": {"requestTimeout": "1s"}}
    assert resolve_to(pols, dps[1], "backend").conf == {"http": {"requestTimeout": "2s"}}


def test_from_resolution_merges_fields_of_several_policies() -> None:
    extra = """
---
type: MeshTimeout
mesh: m
name: idle
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 1h, http: {requestTimeout: 5s}}
---
type: MeshTimeout
mesh: m
name: web-request
spec:
  targetRef: {kind: MeshService, name: web}
  from:
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 2s}}
"""
    dps, pols, _ = load(extra)
    inbound = dps[0].spec.networking.inbound[0]  # type: ignore[attr-defined]
    resolved = resolve_from(pols, dps[0], inbound)
    assert resolved.conf == {"idleTimeout": "1h", "http": {"requestTimeout": "2s"}}
    assert [o.policy for o in resolved.origins] == ["idle", "web-request"]


def test_mesh_timeout_reaches_the_ir() -> None:
    dps, pols, mesh = load(timeout("t", "{kind: Mesh}", "{kind: MeshService, name: backend}", "750ms"))
    ir = build_proxy_ir(build_mesh_context(mesh, dps, pols), "web-1", None)
    backend = next(o for o in ir.outbounds if o.service == "backend")
    db = next(o for o in ir.outbounds if o.service == "db")
    assert backend.timeouts is not None and backend.timeouts.request_ms == 750
    assert db.timeouts is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"targetRef": {"kind": "Mesh"}}, "spec.to"),
        (
            {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "5 minutes"}}]},
            "spec.to[0].default.idleTimeout",
        ),
        (
            {"from": [{"targetRef": {"kind": "MeshService", "name": "x"}, "default": {}}]},
            "spec.from[0].targetRef.kind",
        ),
        (
            {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"bogus": "1s"}}}]},
            "spec.to[0].default.http.bogus",
        ),
    ],
)
def test_invalid_mesh_timeouts_name_the_field(spec: dict[str, object], field: str) -> None:
    doc = {"type": "MeshTimeout", "mesh": "m", "name": "bad", "spec": spec}
    with pytest.raises(ResourceValidationError) as err:
        parse_document(doc, REG)
    fields = [e.field for e in err.value.errors]
    assert any(f.startswith(field) for f in fields), fields


def test_append_lists_accumulate_across_policies() -> None:
    assert merge_patch({"appendModifications": [1]}, {"appendModifications": [2, 3]}) == {
        "appendModifications": [1, 2, 3]
    }
    assert merge_patch({"other": [1]}, {"other": [2]}) == {"other": [2]}


def test_proxy_patches_of_several_policies_reach_the_ir_in_order() -> None:
    extra = ""
    for name, top, port in (("b-mesh", "{kind: Mesh}", 1), ("a-web", "{kind: MeshService, name: web}", 2)):
        extra += f"""
---
type: MeshProxyPatch
mesh: m
name: {name}
spec:
  targetRef: {top}
  default:
    appendModifications:
    - cluster:
        operation: Patch
        match: {{name: backend}}
        jsonPatches: [{{op: replace, path: /connectTimeout, value: {port}s}}]
"""
    dps, pols, mesh = load(extra)
    ctx = build_mesh_context(mesh, dps, pols)
    web = build_proxy_ir(ctx, "web-1", None)
    assert [p.count("connectTimeout") for p in web.patches] == [1, 1]
    assert '"value": "1s"' in web.patches[0] and '"value": "2s"' in web.patches[1]  # mesh-wide first
    assert len(build_proxy_ir(ctx, "backend-1", None).patches) == 1  # only the mesh-wide one


def test_inbound_rules_apply_like_from_mesh() -> None:
    extra = """
---
type: MeshTimeout
mesh: m
name: from-form
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 1h, http: {requestTimeout: 5s}}
---
type: MeshTimeout
mesh: m
name: rules-form
spec:
  targetRef: {kind: MeshService, name: web}
  rules:
  - default: {http: {requestTimeout: 3s}}
"""
    dps, pols, mesh = load(extra)
    ir = build_proxy_ir(build_mesh_context(mesh, dps, pols), "web-1", None)
    t = ir.inbounds[0].timeouts
    assert t is not None and t.request_ms == 3000 and t.idle_ms == 3_600_000
    with pytest.raises(ResourceValidationError) as err:
        parse_document(
            {"type": "MeshTimeout", "mesh": "m", "name": "both", "spec": {
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {}}], "rules": [{"default": {}}]}},
            REG,
        )  # fmt: skip
    assert "rules" in str(err.value)


def test_timeout_attached_to_a_route_applies_to_that_routes_requests_only() -> None:
    extra = """
---
type: MeshHTTPRoute
mesh: m
name: slow-paths
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /reports}}]
      default:
        backendRefs: [{kind: MeshService, name: backend}]
---
type: MeshTimeout
mesh: m
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 3s, http: {requestTimeout: 15s}}
---
type: MeshTimeout
mesh: m
name: reports-are-slow
spec:
  targetRef: {kind: MeshHTTPRoute, name: slow-paths}
  to:
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 60s}}
"""
    dps, pols, mesh = load(extra)
    ir = build_proxy_ir(build_mesh_context(mesh, dps, pols), "web-1", None)
    outbound = next(o for o in ir.outbounds if o.service == "backend")
    by_name = {r.name.split("/")[0]: r for r in outbound.routes}
    reports = by_name["slow-paths"]
    assert reports.timeouts is not None and reports.timeouts.request_ms == 60_000
    assert reports.timeouts.connect_ms == 3000  # the rest comes from the outbound's configuration
    default = by_name["default"]
    assert (
        default.timeouts is None and outbound.timeouts is not None and outbound.timeouts.request_ms == 15_000
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"targetRef": {"kind": "MeshHTTPRoute"}, "to": []}, "spec.targetRef.name"),
        ({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}}, "spec.to"),
        ({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {}}, "spec.default"),
        ({"targetRef": {"kind": "Mesh"}, "default": {}}, "spec.default"),
    ],
)
def test_route_attachment_rules(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ResourceValidationError) as err:
        parse_document({"type": "MeshTimeout", "mesh": "m", "name": "x", "spec": spec}, REG)
    assert any(e.field.startswith(field) for e in err.value.errors), err.value.errors
