"""Cross-zone traffic: SNI formats, availableServices, an ingress's passthrough configuration, remote endpoints
through ingresses, and localityAwareness as Envoy priorities."""

from __future__ import annotations

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.ingress.available import available_services
from isthmus.ingress.build import build_ingress_ir
from isthmus.ingress.locality import assign_priorities, overprovisioning, zone_priorities
from isthmus.ingress.sni import legacy_sni, resource_sni
from isthmus.ingress.translate import translate_ingress
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Endpoint
from isthmus.ir.traffic import Failover, Locality
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.translate import translate

REG = default_registry()
ID = Identity("cert", "key")


def _parse(text: str) -> list[Resource]:
    return [parse_document(d, REG) for d in load_documents(text)]


MESH = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
"""


def _dp(name: str, zone: str, address: str, ready: bool = True) -> str:
    state = "" if ready else "\n    state: NotReady"
    return f"""
---
type: Dataplane
mesh: default
name: {name}
networking:
  address: {address}
  inbound:
  - port: 8080
    tags: {{kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: {zone}}}{state}
"""


CLIENT = """
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
"""

INGRESS_B = """
type: ZoneIngress
name: zi-b
zone: zone-b
networking: {address: 0.0.0.0, port: 10001, advertisedAddress: 203.0.113.7, advertisedPort: 443}
availableServices:
- mesh: default
  instances: 3
  tags: {kuma.io/service: backend, kuma.io/zone: zone-b}
"""


def _ctx(docs: str, ingresses: str = "", zone: str = "") -> MeshContext:
    resources = _parse(MESH + docs)
    mesh = resources[0]
    dps = [r for r in resources[1:] if r.type.kind == "Dataplane"]
    policies = [r for r in resources[1:] if r.type.kind != "Dataplane"]
    return build_mesh_context(
        mesh, dps, policies, "CA", ingresses=_parse(ingresses) if ingresses else [], zone=zone
    )


def test_sni_formats() -> None:
    assert legacy_sni("backend", "mesh1") == "backend{mesh=mesh1}"
    assert (
        legacy_sni("backend", "mesh1", {"version": "v2", "kuma.io/service": "backend"})
        == "backend{mesh=mesh1,version=v2}"
    )
    sni = resource_sni("MeshService", "backend", "default", 80)
    assert sni.startswith("a") and sni.endswith(".backend.80.default.ms") and len(sni.split(".")[0]) == 17
    assert sni == resource_sni("MeshService", "backend", "default", 80)  # client and ingress agree
    assert sni != resource_sni("MeshService", "backend", "default", 81)
    long = resource_sni("MeshService", "b" * 100, "default", 80)
    assert all(len(label) <= 63 for label in long.split("."))


def test_available_services_count_ready_instances_of_the_zone() -> None:
    ctx = _ctx(
        _dp("b1", "zone-b", "10.0.0.1")
        + _dp("b2", "zone-b", "10.0.0.2")
        + _dp("b3", "zone-b", "10.0.0.3", ready=False)
        + _dp("a1", "zone-a", "10.0.0.4")
    )
    assert available_services({"default": ctx}, "zone-b") == [
        {
            "tags": {"kuma.io/protocol": "http", "kuma.io/service": "backend", "kuma.io/zone": "zone-b"},
            "instances": 2,
            "mesh": "default",
        }
    ]


def test_ingress_routes_on_sni_without_tls() -> None:
    ctx = _ctx(_dp("b1", "zone-b", "10.0.0.1") + _dp("a1", "zone-a", "10.0.0.4"))
    ir = build_ingress_ir(_parse(INGRESS_B)[0], {"default": ctx})
    assert [(r.server_names, r.cluster) for r in ir.routes] == [
        (("backend{mesh=default}",), "default:backend")
    ]
    assert [(c.name, c.endpoints) for c in ir.clusters] == [
        ("default:backend", (Endpoint("10.0.0.1", 8080),))
    ]
    out = translate_ingress(ir)
    (listener,) = out[types.LISTENER]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chain = listener.filter_chains[0]
    assert list(chain.filter_chain_match.server_names) == ["backend{mesh=default}"]
    assert chain.filter_chain_match.transport_protocol == "tls"
    assert not chain.HasField("transport_socket")
    assert not any(c.HasField("transport_socket") for c in out[types.CLUSTER])
    assert out[types.SECRET] == []


def test_ingress_skips_meshes_without_mtls() -> None:
    resources = _parse("type: Mesh\nname: default\n" + _dp("b1", "zone-b", "10.0.0.1"))
    ctx = build_mesh_context(resources[0], resources[1:], [], "")
    assert build_ingress_ir(_parse(INGRESS_B)[0], {"default": ctx}).routes == ()


def test_remote_instances_through_the_ingress_with_sni_and_priorities() -> None:
    ctx = _ctx(CLIENT + _dp("a1", "zone-a", "10.0.0.4") + _dp("b1", "zone-b", "10.0.0.1"), INGRESS_B)
    ir = build_proxy_ir(ctx, "web", ID)
    cluster = next(c for c in ir.clusters if c.name == "backend")
    assert cluster.sni == "backend{mesh=default}"
    (eps,) = [e for e in ir.endpoints if e.cluster == "backend"]
    assert eps.endpoints == (
        Endpoint("10.0.0.4", 8080, "zone-a", 1, 0),
        Endpoint("203.0.113.7", 443, "zone-b", 3, 1),  # zone-b's instance only through its ingress
    )
    xds = translate(ir)
    cla = next(c for c in xds[types.ENDPOINT] if c.cluster_name == "backend")
    assert [(g.locality.zone, g.priority) for g in cla.endpoints] == [("zone-a", 0), ("zone-b", 1)]
    assert cla.endpoints[1].lb_endpoints[0].load_balancing_weight.value == 3
    tls_cluster = next(c for c in xds[types.CLUSTER] if c.name == "backend")
    assert b"backend{mesh=default}" in tls_cluster.transport_socket.typed_config.value


def test_one_zone_stays_as_before() -> None:
    ctx = _ctx(
        CLIENT.replace("kuma.io/zone: zone-a", "kuma.io/zone: zone-a") + _dp("a1", "zone-a", "10.0.0.4")
    )
    ir = build_proxy_ir(ctx, "web", ID)
    assert next(c for c in ir.clusters if c.name == "backend").sni == ""
    cla = next(c for c in translate(ir)[types.ENDPOINT] if c.cluster_name == "backend")
    assert len(cla.endpoints) == 1 and cla.endpoints[0].priority == 0


def test_mlbs_disabled_and_failover_list() -> None:
    policy = """
---
type: MeshLoadBalancingStrategy
mesh: default
name: lb
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      localityAwareness:
        crossZone:
          failover:
          - to: {type: Only, zones: [zone-c]}
          - to: {type: Any}
          failoverThreshold: {percentage: 50}
"""
    ctx = _ctx(
        CLIENT
        + _dp("a1", "zone-a", "10.0.0.4")
        + _dp("b1", "zone-b", "10.0.0.1")
        + _dp("c1", "zone-c", "10.0.0.2")
        + policy
    )
    ir = build_proxy_ir(ctx, "web", ID)
    (eps,) = [e for e in ir.endpoints if e.cluster == "backend"]
    assert [(e.locality, e.priority) for e in eps.endpoints] == [("zone-a", 0), ("zone-c", 1), ("zone-b", 2)]
    assert eps.overprovisioning == 200


def test_zone_priorities_rules() -> None:
    zones = {"a", "b", "c", "d"}
    assert zone_priorities(zones, None, "a") == {"": 0, "a": 0, "b": 1, "c": 1, "d": 1}
    assert zone_priorities(zones, Locality(disabled=True), "a") == {"": 0, "a": 0, "b": 0, "c": 0, "d": 0}
    rules = (
        Failover("Only", ("b",), ("x",)),  # not for clients in a
        Failover("AnyExcept", ("d",)),
        Failover("None"),
        Failover("Any"),
    )
    assert zone_priorities(zones, Locality(failover=rules), "a") == {"": 0, "a": 0, "b": 1, "c": 1}
    eps = (Endpoint("1", 1, "d"), Endpoint("2", 2, "b"))
    assert [(e.locality, e.priority) for e in assign_priorities(eps, Locality(failover=rules), "a")] == [
        ("b", 0)
    ]
    assert overprovisioning(Locality(threshold_percent=70)) == 143
    assert overprovisioning(None) is None


def test_locality_awareness_fields_are_checked() -> None:
    bad = """
type: MeshLoadBalancingStrategy
mesh: default
name: lb
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default:
      localityAwareness:
        crossZone:
          failover:
          - to: {type: Only}
"""
    with pytest.raises(ResourceValidationError) as info:
        _parse(bad)
    assert "zones" in str(info.value)


def test_an_ingress_with_nothing_to_serve_has_no_listener() -> None:
    from isthmus.ingress.build import IngressIR

    ir = IngressIR(
        node_id=":zoneingress:zi",
        name="zi",
        zone="a",
        address="127.0.0.1",
        port=10001,
        routes=(),
        clusters=(),
    )
    out = translate_ingress(ir)
    assert out[types.LISTENER] == [] and out[types.CLUSTER] == []


def test_a_service_only_in_another_zone_gets_its_mesh_name_and_vip() -> None:
    client = CLIENT.replace("name: web\n", "name: web\nlabels: {isthmus.io/dns-port: '15053'}\n")
    ingress = INGRESS_B.replace("kuma.io/service: backend, kuma.io/zone: zone-b", "kuma.io/service: catalog, kuma.io/protocol: http, kuma.io/zone: zone-b")  # fmt: skip
    ctx = _ctx(client + _dp("a1", "zone-a", "10.0.0.4"), ingress, zone="zone-a")
    ir = build_proxy_ir(ctx, "web", ID)
    assert ir.dns is not None
    (vip,) = [r.addresses[0] for r in ir.dns.records if r.name == "catalog.mesh"]
    (listener,) = [o for o in ir.outbounds if o.address == vip and o.port == 80]
    assert listener.protocol.value == "http"
    (eps,) = [e for e in ir.endpoints if e.cluster == listener.cluster]
    assert [(e.address, e.port, e.locality) for e in eps.endpoints] == [("203.0.113.7", 443, "zone-b")]


def _versioned(name: str, zone: str, address: str, version: str) -> str:
    return _dp(name, zone, address).replace("kuma.io/zone: ", f"version: {version}, kuma.io/zone: ")


ROUTE_TO_V2 = """
---
type: MeshHTTPRoute
mesh: default
name: to-v2
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
"""

INGRESS_B_VERSIONS = INGRESS_B.replace(
    """- mesh: default
  instances: 3
  tags: {kuma.io/service: backend, kuma.io/zone: zone-b}""",
    """- mesh: default
  instances: 1
  tags: {kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: zone-b, version: v1}
- mesh: default
  instances: 2
  tags: {kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: zone-b, version: v2}""",
)


def test_a_subset_cluster_through_an_ingress_sends_the_subsets_sni() -> None:
    ctx = _ctx(CLIENT + ROUTE_TO_V2, INGRESS_B_VERSIONS, zone="zone-a")
    ir = build_proxy_ir(ctx, "web", ID)
    (subset,) = [c for c in ir.clusters if c.subset]
    assert subset.subset == (("version", "v2"),)
    assert subset.sni == "backend{mesh=default,version=v2}"
    (eps,) = [e for e in ir.endpoints if e.cluster == subset.name]
    assert [(e.address, e.port, e.weight) for e in eps.endpoints] == [("203.0.113.7", 443, 2)]  # v2 only
    assert next(c for c in ir.clusters if c.name == "backend").sni == "backend{mesh=default}"
    tls = next(c for c in translate(ir)[types.CLUSTER] if c.name == subset.name)
    assert b"backend{mesh=default,version=v2}" in tls.transport_socket.typed_config.value


def test_the_ingress_has_a_chain_per_routed_subset_with_only_its_instances() -> None:
    ctx = _ctx(
        ROUTE_TO_V2
        + _versioned("b1", "zone-b", "10.0.0.1", "v1")
        + _versioned("b2", "zone-b", "10.0.0.2", "v2")
        + _versioned("b3", "zone-b", "10.0.0.3", "v2")
        + _versioned("a2", "zone-a", "10.0.0.4", "v2")  # another zone's v2: not this ingress's
    )
    ir = build_ingress_ir(_parse(INGRESS_B)[0], {"default": ctx})
    assert [(r.server_names, r.cluster) for r in ir.routes] == [
        (("backend{mesh=default}",), "default:backend"),
        (("backend{mesh=default,version=v2}",), "default:backend:version=v2"),
    ]
    clusters = {c.name: c.endpoints for c in ir.clusters}
    assert clusters["default:backend"] == tuple(Endpoint(f"10.0.0.{i}", 8080) for i in (1, 2, 3))
    assert clusters["default:backend:version=v2"] == (Endpoint("10.0.0.2", 8080), Endpoint("10.0.0.3", 8080))
    (listener,) = translate_ingress(ir)[types.LISTENER]
    chain = next(c for c in listener.filter_chains if c.name == "default:backend:version=v2")
    assert list(chain.filter_chain_match.server_names) == ["backend{mesh=default,version=v2}"]
    # a subset no instance of the zone has gets no chain (clients see it in no availableServices either)
    only_v1 = _ctx(ROUTE_TO_V2 + _versioned("b1", "zone-b", "10.0.0.1", "v1"))
    assert [r.cluster for r in build_ingress_ir(_parse(INGRESS_B)[0], {"default": only_v1}).routes] == [
        "default:backend"
    ]
