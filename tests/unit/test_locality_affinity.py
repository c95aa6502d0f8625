"""MeshLoadBalancingStrategy localityAwareness.localZone.affinityTags: weighted groups inside the local zone (Kuma's
default weights 9 * 10^(n-i-1)), Envoy localities with subZone and locality-weighted balancing."""

from __future__ import annotations

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ingress.affinity import affinity_groups
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.translate import translate

REG = default_registry()

DOCS = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: Dataplane
mesh: default
name: web
networking:
  address: 10.0.0.9
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, kuma.io/zone: zone-a, k8s.io/node: node1, k8s.io/az: az1}
  outbound:
  - port: 7000
    tags: {kuma.io/service: backend}
---
type: MeshLoadBalancingStrategy
mesh: default
name: affinity
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      localityAwareness:
        localZone:
          affinityTags:
          - key: k8s.io/node
          - key: k8s.io/az
          - key: k8s.io/region
"""


def _backend(name: str, address: str, zone: str, extra: str) -> str:
    return f"""
---
type: Dataplane
mesh: default
name: {name}
networking:
  address: {address}
  inbound:
  - port: 8080
    tags: {{kuma.io/service: backend, kuma.io/zone: {zone}{extra}}}
"""


def _resources() -> list[Resource]:
    text = (
        DOCS
        + _backend("same-node", "10.0.0.1", "zone-a", ", k8s.io/node: node1, k8s.io/az: az1")
        + _backend("same-az", "10.0.0.2", "zone-a", ", k8s.io/node: node2, k8s.io/az: az1")
        + _backend("elsewhere", "10.0.0.3", "zone-a", ", k8s.io/node: node3, k8s.io/az: az2")
        + _backend("other-zone", "10.0.0.4", "zone-b", "")
    )
    return [parse_document(d, REG) for d in load_documents(text)]


def test_default_weights_follow_kuma() -> None:
    tags = (("k8s.io/node", None), ("k8s.io/az", None), ("k8s.io/region", None))
    assert affinity_groups(tags, {"k8s.io/node": "n", "k8s.io/az": "a"}) == [
        ("k8s.io/node", "n", 900),
        ("k8s.io/az", "a", 90),
    ]
    assert affinity_groups((("k8s.io/az", 7),), {"k8s.io/az": "a"}) == [("k8s.io/az", "a", 7)]


def test_affinity_groups_in_eds_in_priority_order() -> None:
    resources = _resources()
    dps = [r for r in resources[1:] if r.type.kind == "Dataplane"]
    policies = [r for r in resources[1:] if r.type.kind != "Dataplane"]
    ctx = build_mesh_context(resources[0], dps, policies, "CA")
    ir = build_proxy_ir(ctx, "web", Identity("c", "k"))
    out = translate(ir)
    (cla,) = [c for c in out[types.ENDPOINT] if c.cluster_name == "backend"]
    groups = [
        (
            g.priority,
            g.locality.zone,
            g.locality.sub_zone,
            g.load_balancing_weight.value,
            [e.endpoint.address.socket_address.address for e in g.lb_endpoints],
        )
        for g in cla.endpoints
    ]
    assert groups == [
        (0, "zone-a", "", 1, ["10.0.0.3"]),
        (0, "zone-a", "k8s.io/az=az1", 90, ["10.0.0.2"]),
        (0, "zone-a", "k8s.io/node=node1", 900, ["10.0.0.1"]),
        (1, "zone-b", "", 1, ["10.0.0.4"]),
    ]
    (cluster,) = [c for c in out[types.CLUSTER] if c.name == "backend"]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
