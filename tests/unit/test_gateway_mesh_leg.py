"""The gateway's mesh leg (isthmus.gateway.mesh_leg, isthmus.ir.build) and the sidecar's consumer-header rule: the
mesh pipeline builds a gateway's legs with the mesh's policies, Kong values that differ from Kong's defaults win,
gateway to gateway through the proxy listener, and ``explain`` of a gateway proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.gateway import mesh_leg
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import CONSUMER_HEADERS
from isthmus.policies import regex
from isthmus.policies.explain import explain
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed

CERTS = Path(__file__).parent.parent / "golden" / "certs"
RESOURCES = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - {name: ca-1, type: builtin}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 8080
    servicePort: 9000
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: Dataplane
mesh: default
name: edge-1
labels:
  isthmus.io/gateway-workspace: default
  isthmus.io/gateway-listen: 127.0.0.1:8000
networking:
  address: 10.0.0.9
  gateway:
    type: DELEGATED
    tags: {kuma.io/service: edge}
---
type: MeshRetry
mesh: default
name: gateway-retries
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http: {numRetries: 4, retryOn: ["5xx"]}
---
type: MeshTimeout
mesh: default
name: gateway-timeouts
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionTimeout: 3s
      http: {requestTimeout: 7s}
---
type: MeshTrafficPermission
mesh: default
name: only-edge
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: edge}
    default: {action: Allow}
"""
WS = "default"
IDENTITY = Identity((CERTS / "cert.pem").read_text(), (CERTS / "key.pem").read_text())


def _ctx() -> MeshContext:
    registry = default_registry()
    resources = [parse_document(d, registry) for d in load_documents(RESOURCES)]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    policies = [r for r in resources if r.type.is_policy]
    return build_mesh_context(mesh, dps, policies, (CERTS / "ca.pem").read_text())


def _service(sid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "name": sid,
        "host": "backend.mesh",
        "port": 80,
        "protocol": "http",
        "retries": 5,
        "connect_timeout": 60000,
        "read_timeout": 60000,
        "write_timeout": 60000,
        **fields,
    }


def _entities(*services: dict[str, Any]) -> dict[str, Any]:
    return {
        "services": {s["id"]: s for s in services},
        "routes": {
            f"r-{s['id']}": {
                "id": f"r-{s['id']}",
                "name": s["id"],
                "paths": [f"/{s['id']}"],
                "service": {"id": s["id"]},
            }
            for s in services
        },
    }


def _fused(entities: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The gateway proxy's served resources, unpacked, by type and name."""
    ir = build_proxy_ir(_ctx(), "edge-1", IDENTITY, mesh_leg.mesh_services(entities))
    base = Snapshot.of_resources(translate_packed(ir))
    overlay = translate(WS, entities, [ListenAddress("127.0.0.1", 8000)])
    classes = {
        types.CLUSTER: cluster_pb2.Cluster,
        types.ROUTE: route_pb2.RouteConfiguration,
        types.LISTENER: listener_pb2.Listener,
    }
    out: dict[str, dict[str, Any]] = {}
    for type_url, resources in mesh_leg.fuse(base, overlay).items():
        for r in resources:
            if type_url in classes:
                msg = classes[type_url]()
                r.packed.Unpack(msg)
                out.setdefault(type_url, {})[r.name] = msg
            else:
                out.setdefault(type_url, {})[r.name] = r
    return out


def _routes(out: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rc = out[types.ROUTE]["kong:default"]
    return {r.name: r for vh in rc.virtual_hosts for r in vh.routes}


def test_a_mesh_name_service_gets_a_leg_without_an_outbound_entry() -> None:
    ir = build_proxy_ir(_ctx(), "edge-1", IDENTITY, frozenset({"backend"}))
    (leg,) = [o for o in ir.outbounds if o.service == "backend"]
    assert leg.port == 0 and leg.route_config == "gateway-leg:backend"
    assert leg.retry is not None and leg.retry.http is not None and leg.retry.http.num_retries == 4
    cluster = next(c for c in ir.clusters if c.name == "backend")
    assert cluster.verify_spiffe_id == "spiffe://default/backend" and cluster.tls is not None
    assert cluster.connect_timeout_ms == 3000  # MeshTimeout's connectionTimeout
    served = translate_packed(ir)
    assert not [r for r in served[types.LISTENER] if r.name.startswith("outbound:")]  # no listener for a leg
    assert "gateway-leg:backend" in {r.name for r in served[types.ROUTE]}


def test_mesh_policies_apply_unless_the_kong_service_sets_the_value() -> None:
    out = _fused(_entities(_service("plain"), _service("own", retries=1, read_timeout=2000)))
    assert not [n for n in out[types.ROUTE] if n.startswith("gateway-leg:")]  # never served
    routes = _routes(out)
    plain, own = routes["plain /plain"].route, routes["own /own"].route
    assert plain.cluster == "backend"
    assert plain.retry_policy.num_retries.value == 4 and plain.timeout.seconds == 7  # the mesh's
    assert (
        own.retry_policy.num_retries.value == 1 and own.timeout.seconds == 0
    )  # Kong's (no total timeout in Kong)
    assert own.idle_timeout.seconds == 60  # max(read_timeout, write_timeout) as Kong's
    assert not routes["plain /plain"].metadata.filter_metadata  # the mark is consumed


def test_a_kong_connect_timeout_or_upstream_gets_a_copy_of_the_mesh_cluster() -> None:
    entities = _entities(_service("fast", connect_timeout=1500))
    entities["upstreams"] = {
        "u": {"id": "u", "name": "backend.mesh", "algorithm": "least-connections", "healthchecks": {}}
    }
    out = _fused(entities)
    name = mesh_leg.leg_cluster_name(WS, "fast")
    assert _routes(out)["fast /fast"].route.cluster == name
    copy, mesh = out[types.CLUSTER][name], out[types.CLUSTER]["backend"]
    assert copy.connect_timeout.ToMilliseconds() == 1500 and mesh.connect_timeout.ToMilliseconds() == 3000
    assert copy.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert copy.eds_cluster_config.service_name == "backend"  # the mesh's endpoints
    assert copy.transport_socket == mesh.transport_socket  # mTLS with the gateway's identity
    notes = mesh_leg.notes(entities)["backend"]
    assert any("connect_timeout=1500" in n for n in notes)
    assert any("least-connections" in n and "MeshLoadBalancingStrategy" in n for n in notes)


def test_a_gateway_accepts_mesh_mtls_on_its_proxy_listener() -> None:
    ctx = _ctx()
    (endpoint,) = ctx.endpoints["edge"]  # other members reach edge at its proxy listener
    assert (endpoint.address, endpoint.port) == ("10.0.0.9", 8000)
    out = _fused(_entities(_service("plain")))
    assert "inbound:127.0.0.1:8000" not in out[types.LISTENER]
    listener = out[types.LISTENER]["kong:http:127.0.0.1:8000"]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    mesh_chain, kong_chain = listener.filter_chains
    assert mesh_chain.filter_chain_match.transport_protocol == "tls" and mesh_chain.HasField(
        "transport_socket"
    )
    assert not kong_chain.HasField("filter_chain_match")
    hcm = hcm_pb2.HttpConnectionManager()
    mesh_chain.filters[-1].typed_config.Unpack(hcm)
    assert "envoy.filters.http.rbac" in [f.name for f in hcm.http_filters]  # MeshTrafficPermission of edge
    assert hcm.route_config.virtual_hosts[0].routes[-1].route.cluster == "localhost:8000"


def test_sidecar_keeps_consumer_headers_only_from_gateways() -> None:
    ir = build_proxy_ir(_ctx(), "backend-1", IDENTITY)
    (inbound,) = ir.inbounds
    assert inbound.gateway_callers == ("spiffe://default/edge",)
    served = translate_packed(ir)
    listener = listener_pb2.Listener()
    next(r for r in served[types.LISTENER] if r.name.startswith("inbound:")).packed.Unpack(listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    gateway, other = hcm.route_config.virtual_hosts[0].routes
    assert not gateway.request_headers_to_remove
    assert list(other.request_headers_to_remove) == list(CONSUMER_HEADERS)
    pattern = gateway.match.headers[0].string_match.safe_regex.regex
    assert gateway.match.headers[0].name == "x-forwarded-client-cert"
    xfcc = "By=spiffe://default/backend;Hash=ab12;URI=spiffe://default/{}"
    assert regex.fullmatch(pattern, xfcc.format("edge"))
    assert regex.fullmatch(pattern, xfcc.format("edge") + ";URI=kuma://kuma.io/zone/z")
    assert not regex.fullmatch(pattern, xfcc.format("edge-b"))
    assert not regex.fullmatch(pattern, xfcc.format("web"))
    assert not regex.fullmatch(pattern, "By=spiffe://default/edge;URI=spiffe://default/web")


def test_explain_of_a_gateway_proxy_names_kong_overrides() -> None:
    entities = _entities(_service("own", retries=1))
    notes = mesh_leg.notes(entities)["backend"]
    result = explain(_ctx(), "edge-1", "backend", gateway_services=frozenset({"backend"}), kong=notes)
    assert result["outbound"]["name"] == "gateway-leg:backend"
    assert result["retry"]["http"]["num_retries"] == 4  # the mesh's policy for the leg ...
    assert result["kongOverrides"] == [
        "Kong Service 'own' sets retries=1: it overrides MeshRetry for this leg"
    ]
    assert [d["allowed"] for d in result["destinations"]] == [True]  # the gateway's identity is allowed
