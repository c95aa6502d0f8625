"""``targetRef.proxyTypes``: a Mesh or MeshSubset targetRef with proxyTypes selects only proxies of those types
(Kuma: a Dataplane with ``networking.gateway`` is a Gateway, any other a Sidecar); Kuma's validator allows the
field only with kinds Mesh and MeshSubset and refuses an empty list."""

from __future__ import annotations

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.policies.engine import resolve_from, resolve_to, selects_proxy
from isthmus.policies.matching import proxy_type, target_ref_of
from isthmus.resources.common import ProxyType
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document

REG = default_registry()

BASE = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 20001
    servicePort: 8001
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
---
type: Dataplane
mesh: default
name: edge-1
networking:
  address: 127.0.0.2
  gateway:
    type: DELEGATED
    tags: {kuma.io/service: edge}
"""

# Kuma's documented default for gateways (MeshTimeout docs, "Default configuration ... applied on inbounds and
# outbounds of all gateways"; Kuma 2.x creates it with every new mesh).
GATEWAY_DEFAULT = """
---
type: MeshTimeout
name: mesh-gateways-timeout-all-default
mesh: default
spec:
  targetRef:
    kind: Mesh
    proxyTypes:
    - Gateway
  from:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 5m
      http:
        streamIdleTimeout: 5s
        requestHeadersTimeout: 500ms
  to:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 1h
      http:
        streamIdleTimeout: 5s
"""


def load(extra: str) -> tuple[Resource, dict[str, Resource], list[Resource]]:
    rs = [parse_document(d, REG) for d in load_documents(BASE + extra)]
    dps = {r.name: r for r in rs if r.type.kind == "Dataplane"}
    return rs[0], dps, [r for r in rs if r.type.is_policy]


def test_proxy_type_of_a_dataplane() -> None:
    _, dps, _ = load("")
    assert proxy_type(dps["web-1"]) is ProxyType.SIDECAR
    assert proxy_type(dps["edge-1"]) is ProxyType.GATEWAY


def test_gateway_only_policy_does_not_configure_sidecars() -> None:
    mesh, dps, pols = load(GATEWAY_DEFAULT)
    web = dps["web-1"]
    assert not selects_proxy(target_ref_of(pols[0]), web)
    assert selects_proxy(target_ref_of(pols[0]), dps["edge-1"])
    assert resolve_to(pols, web, "backend").empty
    spec = web.spec
    assert isinstance(spec, DataplaneSpec)
    assert resolve_from(pols, web, spec.networking.inbound[0]).empty
    ir = build_proxy_ir(build_mesh_context(mesh, list(dps.values()), pols), "web-1", None)
    backend = next(o for o in ir.outbounds if o.service == "backend")
    assert backend.timeouts is None or backend.timeouts.stream_idle_ms != 5000


@pytest.mark.parametrize("types", ["[Sidecar]", "[Sidecar, Gateway]"])
def test_policy_for_sidecars_applies_to_sidecars(types: str) -> None:
    mesh, dps, pols = load(GATEWAY_DEFAULT.replace("proxyTypes:\n    - Gateway", f"proxyTypes: {types}"))
    web = dps["web-1"]
    assert resolve_to(pols, web, "backend").conf == {"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}}
    ir = build_proxy_ir(build_mesh_context(mesh, list(dps.values()), pols), "web-1", None)
    backend = next(o for o in ir.outbounds if o.service == "backend")
    assert backend.timeouts is not None and backend.timeouts.stream_idle_ms == 5000
    assert selects_proxy(target_ref_of(pols[0]), dps["edge-1"]) == ("Gateway" in types)


def test_mesh_subset_with_proxy_types() -> None:
    extra = GATEWAY_DEFAULT.replace(
        "kind: Mesh\n    proxyTypes:\n    - Gateway",
        "kind: MeshSubset\n    tags: {kuma.io/service: web}\n    proxyTypes: [Sidecar]",
    )
    _, dps, pols = load(extra)
    assert selects_proxy(target_ref_of(pols[0]), dps["web-1"])
    assert not selects_proxy(target_ref_of(pols[0]), dps["edge-1"])
    gateway_only = extra.replace("proxyTypes: [Sidecar]", "proxyTypes: [Gateway]")
    _, dps, pols = load(gateway_only)
    assert not selects_proxy(target_ref_of(pols[0]), dps["web-1"])


def test_without_proxy_types_both_types_are_selected() -> None:
    _, dps, pols = load(GATEWAY_DEFAULT.replace("    proxyTypes:\n    - Gateway\n", ""))
    assert all(selects_proxy(target_ref_of(pols[0]), dp) for dp in dps.values())


def policy(kind: str, spec: str) -> dict[str, object]:
    doc: dict[str, object] = load_documents(f"type: {kind}\nname: p\nmesh: default\nspec:\n{spec}")[0]
    return doc


@pytest.mark.parametrize(
    ("kind", "spec", "field", "reason"),
    [
        # Kuma's validator: proxyTypes only with kind Mesh or MeshSubset
        (
            "MeshTimeout",
            "  targetRef: {kind: MeshService, name: web, proxyTypes: [Sidecar]}\n"
            "  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1s}}]",
            "spec.targetRef.proxyTypes",
            "must not be set with kind MeshService",
        ),
        (
            "MeshTimeout",
            "  targetRef: {kind: MeshServiceSubset, name: web, tags: {v: '1'}, proxyTypes: [Sidecar]}\n"
            "  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1s}}]",
            "spec.targetRef.proxyTypes",
            "must not be set with kind MeshServiceSubset",
        ),
        (
            "MeshRetry",
            "  targetRef: {kind: Dataplane, name: web-1, proxyTypes: [Sidecar]}\n"
            "  to: [{targetRef: {kind: Mesh}, default: {tcp: {maxConnectAttempt: 2}}}]",
            "spec.targetRef.proxyTypes",
            "must not be set with kind Dataplane",
        ),
        # Kuma: "must be undefined or have at least one element"
        (
            "MeshTimeout",
            "  targetRef: {kind: Mesh, proxyTypes: []}\n  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1s}}]",
            "spec.targetRef.proxyTypes",
            "at least one item",
        ),
        # only the top-level targetRef selects proxies
        (
            "MeshTimeout",
            "  targetRef: {kind: Mesh}\n"
            "  to: [{targetRef: {kind: Mesh, proxyTypes: [Gateway]}, default: {idleTimeout: 1s}}]",
            "spec.to[0].targetRef.proxyTypes",
            "top-level",
        ),
        (
            "MeshTrafficPermission",
            "  targetRef: {kind: Mesh, proxyTypes: []}\n  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]",
            "spec.targetRef.proxyTypes",
            "at least one item",
        ),
        (
            "MeshTrafficPermission",
            "  targetRef: {kind: Mesh}\n"
            "  from: [{targetRef: {kind: Mesh, proxyTypes: [Sidecar]}, default: {action: Allow}}]",
            "spec.from[0].targetRef.proxyTypes",
            "top-level",
        ),
    ],
)
def test_proxy_types_refused_where_kuma_refuses_it(kind: str, spec: str, field: str, reason: str) -> None:
    with pytest.raises(ResourceValidationError) as err:
        parse_document(policy(kind, spec), REG)
    assert any(e.field == field and reason in e.reason for e in err.value.errors), err.value.errors


def test_unknown_proxy_type_is_refused() -> None:
    doc = policy(
        "MeshTimeout",
        "  targetRef: {kind: Mesh, proxyTypes: [Ingress]}\n  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1s}}]",
    )
    with pytest.raises(ResourceValidationError) as err:
        parse_document(doc, REG)
    assert any(e.field.startswith("spec.targetRef.proxyTypes") for e in err.value.errors), err.value.errors


@pytest.mark.parametrize("types", ["[Sidecar]", "[Gateway]", "[Sidecar, Gateway]"])
def test_proxy_types_accepted_on_mesh_and_mesh_subset(types: str) -> None:
    for top in ("{kind: Mesh, proxyTypes: %s}", "{kind: MeshSubset, tags: {v: '1'}, proxyTypes: %s}"):
        spec = (
            f"  targetRef: {top % types}\n  to: [{{targetRef: {{kind: Mesh}}, default: {{idleTimeout: 1s}}}}]"
        )
        parse_document(policy("MeshTimeout", spec), REG)
