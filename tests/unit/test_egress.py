"""Zone egress (Mesh.routing.zoneEgress): sidecars reach other zones and MeshExternalServices through their
zone's egress; the egress passes other zones' traffic through by SNI and terminates mTLS for external services."""

from __future__ import annotations

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.egress.build import build_egress_ir
from isthmus.egress.node import egress_name, egress_node_id
from isthmus.egress.translate import translate_egress
from isthmus.ingress.sni import legacy_sni, resource_sni
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Endpoint, Secret
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds import types

REG = default_registry()
ID = Identity("cert", "key")

MESH = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
routing: {zoneEgress: true}
"""
DOCS = """
---
type: Dataplane
mesh: default
name: web
networking:
  address: 10.0.0.9
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, kuma.io/zone: zone-a}
  outbound:
  - port: 7000
    tags: {kuma.io/service: backend}
  - port: 7001
    backendRef: {kind: MeshExternalService, name: httpbin}
---
type: Dataplane
mesh: default
name: backend-a
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/zone: zone-a}
---
type: MeshExternalService
mesh: default
name: httpbin
spec:
  match: {type: HostnameGenerator, port: 80, protocol: http}
  endpoints: [{address: 192.0.2.10, port: 8080}]
"""
INGRESS_B = """
type: ZoneIngress
name: zi-b
zone: zone-b
networking: {address: 0.0.0.0, port: 10001, advertisedAddress: 203.0.113.7, advertisedPort: 443}
availableServices:
- mesh: default
  instances: 3
  tags: {kuma.io/service: backend, kuma.io/zone: zone-b, version: v2}
"""
EGRESS_A = """
type: ZoneEgress
name: ze-a
zone: zone-a
networking: {address: 10.0.0.50, port: 10002}
"""


def _parse(text: str) -> list[Resource]:
    return [parse_document(d, REG) for d in load_documents(text)]


def _ctx(
    mesh: str = MESH, zone_proxies: str = INGRESS_B + "---\n" + EGRESS_A, extra: str = ""
) -> MeshContext:
    resources = _parse(mesh + DOCS + extra)
    dps = [r for r in resources[1:] if r.type.kind == "Dataplane"]
    policies = [r for r in resources[1:] if r.type.kind != "Dataplane"]
    return build_mesh_context(
        resources[0], dps, policies, "CA", ingresses=_parse(zone_proxies) if zone_proxies else []
    )


def test_zone_egress_resource_and_node_id() -> None:
    (res,) = _parse(EGRESS_A)
    assert res.type.plural == "zoneegresses" and res.type.kds_scope.value == "from-zone"
    assert egress_name(egress_node_id("ze-a")) == "ze-a" and egress_name("default.web") is None
    with pytest.raises(ResourceValidationError) as caught:
        _parse("type: ZoneEgress\nname: x\nzone: Bad_Zone\nnetworking: {address: nope, port: 0}")
    assert {e.field for e in caught.value.errors} == {"zone", "networking.address", "networking.port"}


def test_sidecar_reaches_other_zones_through_its_egress() -> None:
    ir = build_proxy_ir(_ctx(), "web", ID)
    (backend,) = [c for c in ir.clusters if c.name == "backend"]
    assert backend.sni == legacy_sni("backend", "default")  # the egress and the remote ingress route on it
    assert backend.verify_spiffe_id == "spiffe://default/backend"  # mTLS stays end to end
    (eps,) = [e for e in ir.endpoints if e.cluster == "backend"]
    assert eps.endpoints == (
        Endpoint("10.0.0.1", 8080, "zone-a", priority=0),
        Endpoint("10.0.0.50", 10002, "zone-b", weight=3, priority=1),  # zone-b through the egress
    )


def test_sidecar_reaches_external_services_through_its_egress() -> None:
    ir = build_proxy_ir(_ctx(), "web", ID)
    (mes,) = [c for c in ir.clusters if c.service == "httpbin"]
    assert mes.external is None and not mes.eds
    assert mes.endpoints == (Endpoint("10.0.0.50", 10002),)
    assert mes.tls is not None and mes.verify_spiffe_id == "spiffe://default/zone-egress"
    assert mes.sni == resource_sni("MeshExternalService", "httpbin", "default", 80)


def test_without_an_egress_nothing_leaves_the_zone() -> None:
    ir = build_proxy_ir(_ctx(zone_proxies=INGRESS_B), "web", ID)
    (eps,) = [e for e in ir.endpoints if e.cluster == "backend"]
    assert [e.address for e in eps.endpoints] == ["10.0.0.1"]
    (mes,) = [c for c in ir.clusters if c.service == "httpbin"]
    assert mes.endpoints == ()


def test_without_zone_egress_the_mesh_goes_direct() -> None:
    ctx = _ctx(mesh=MESH.replace("routing: {zoneEgress: true}", ""))
    ir = build_proxy_ir(ctx, "web", ID)
    (eps,) = [e for e in ir.endpoints if e.cluster == "backend"]
    assert [e.address for e in eps.endpoints] == ["10.0.0.1", "203.0.113.7"]
    (mes,) = [c for c in ir.clusters if c.service == "httpbin"]
    assert mes.external is not None and mes.endpoints == (Endpoint("192.0.2.10", 8080),)
    (egress,) = _parse(EGRESS_A)
    assert build_egress_ir(egress, {"default": ctx}).chains == ()  # the mesh did not ask for it


def test_egress_passes_other_zones_through_and_terminates_external_services() -> None:
    ctx = _ctx()
    (egress,) = _parse(EGRESS_A)
    ir = build_egress_ir(egress, {"default": ctx})
    by_name = {c.cluster: c for c in ir.chains}
    backend = by_name["default:backend"]
    assert backend.server_names == ("backend{mesh=default}",) and not backend.terminate
    assert backend.zones == ("zone-b",)
    assert {e.cluster: e.endpoints for e in ir.endpoints}["default:backend"] == (
        Endpoint("203.0.113.7", 443, "zone-b", weight=3),
    )
    mes = by_name["default:mes:httpbin"]
    assert mes.terminate and mes.server_names == (
        resource_sni("MeshExternalService", "httpbin", "default", 80),
    )
    assert ir.meshes == ("default",)

    secrets = (
        Secret("identity_cert:secret:default", "C", "K"),
        Secret("mesh_ca:secret:default", trusted_ca="CA"),
    )
    out = translate_egress(ir, secrets)
    (listener,) = out[types.LISTENER]
    chains = {fc.name: fc for fc in listener.filter_chains}
    assert not chains["default:backend"].HasField("transport_socket")  # TLS passes through, no key
    assert chains["default:mes:httpbin"].HasField("transport_socket")  # mesh mTLS ends at the egress
    assert "http_connection_manager" in chains["default:mes:httpbin"].filters[0].name
    clusters = {c.name: c for c in out[types.CLUSTER]}
    assert not clusters["default:backend"].HasField("transport_socket")
    assert [s.name for s in out[types.SECRET]] == ["identity_cert:secret:default", "mesh_ca:secret:default"]


def test_egress_of_the_other_zone_serves_nothing_from_its_own_zone() -> None:
    (egress,) = _parse(EGRESS_A.replace("zone-a", "zone-b"))
    ir = build_egress_ir(egress, {"default": _ctx()})
    assert [c.cluster for c in ir.chains] == ["default:mes:httpbin"]  # zone-b's own services are not remote


def test_explain_shows_zones_priorities_weights_and_zone_proxies() -> None:
    from isthmus.cli.output import render_explain
    from isthmus.policies.explain import explain

    result = explain(_ctx(), "web", "backend")
    (backend,) = result["backends"]
    zones = {z["zone"]: z for z in backend["zones"]}
    assert zones["zone-a"]["priority"] == 0 and zones["zone-a"]["via"] == {"type": "direct"}
    assert zones["zone-b"]["priority"] == 1 and zones["zone-b"]["weight"] == 3
    assert zones["zone-b"]["via"] == {"type": "egress", "egresses": ["ze-a"], "ingresses": ["zi-b"]}
    assert zones["zone-b"]["percentOfPriority"] == 100.0
    text = render_explain(result)
    assert "zone zone-b: priority 1, weight 3 (100.0% of its priority), egress ze-a -> ingress zi-b" in text

    direct = explain(_ctx(mesh=MESH.replace("routing: {zoneEgress: true}", "")), "web", "backend")
    (backend,) = direct["backends"]
    zones = {z["zone"]: z for z in backend["zones"]}
    assert zones["zone-b"]["via"] == {"type": "ingress", "ingresses": ["zi-b"]}
    assert zones["zone-b"]["endpoints"] == [
        {"address": "203.0.113.7", "port": 443, "weight": 3, "zone": "zone-b"}
    ]


def test_an_egress_with_nothing_to_serve_has_no_listener() -> None:
    from isthmus.egress.build import EgressIR

    ir = EgressIR(node_id=":zoneegress:ze", name="ze", zone="a", address="127.0.0.1", port=10002, chains=(), clusters=(), endpoints=())  # fmt: skip
    assert translate_egress(ir)[types.LISTENER] == []


def test_egress_has_a_chain_for_each_subset_routes_name_either_way() -> None:
    route = """
---
type: MeshHTTPRoute
mesh: default
name: to-v2
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      default:
        backendRefs: [{kind: MeshService, name: backend, tags: {version: v2}}]
"""
    (egress,) = _parse(EGRESS_A)
    ir = build_egress_ir(egress, {"default": _ctx(extra=route)})
    names = {c.cluster: c.server_names for c in ir.chains}
    # a MeshService backendRef with tags is a subset too: the client sends its subset SNI through the egress
    assert names["default:backend,version=v2"] == ("backend{mesh=default,version=v2}",)
