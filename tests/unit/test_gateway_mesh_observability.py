"""MeshAccessLog and MeshTrace selecting a gateway proxy reach its Kong listeners (isthmus.gateway.mesh_leg.fuse):
the access logs of each route's destination (a mesh leg's ``to`` items, ``to: Mesh`` for the routes outside the
mesh) with Kuma's placeholders resolved for the gateway, and the tracer unless a Kong tracing plugin sets one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.gateway import mesh_leg
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed

CERTS = Path(__file__).parent.parent / "golden" / "certs"
IDENTITY = Identity((CERTS / "cert.pem").read_text(), (CERTS / "key.pem").read_text())
MESH = """
type: Mesh
name: default
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
name: web-1
networking:
  address: 10.0.0.3
  inbound:
  - port: 8080
    servicePort: 9000
    tags: {kuma.io/service: web, kuma.io/protocol: http}
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
"""
FORMAT = "%KUMA_SOURCE_SERVICE% %KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION% %REQ(:PATH)%"


def _access_log(name: str, target: str, path: str, fmt: str = FORMAT) -> str:
    return f"""
---
type: MeshAccessLog
mesh: default
name: {name}
spec:
  targetRef: {{kind: MeshService, name: edge}}
  to:
  - targetRef: {target}
    default:
      backends:
      - type: File
        file: {{path: {path}, format: {{type: Plain, plain: "{fmt}"}}}}
"""


TRACE = """
---
type: MeshTrace
mesh: default
name: trace-edge
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: edge}}
  default:
    sampling: {overall: 50}
    backends:
    - type: Zipkin
      zipkin: {url: "http://127.0.0.1:9411/api/v2/spans"}
"""


def _service(sid: str, host: str) -> dict[str, Any]:
    return {"id": sid, "name": sid, "host": host, "port": 80, "protocol": "http", "retries": 5,
            "connect_timeout": 60000, "read_timeout": 60000, "write_timeout": 60000}  # fmt: skip


def _entities(plugins: list[dict[str, Any]] | None = None, **hosts: str) -> dict[str, Any]:
    services = [_service(sid, host) for sid, host in hosts.items()]
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
        "plugins": {p["id"]: p for p in plugins or []},
    }


def _hcm(policies: str, entities: dict[str, Any]) -> hcm_pb2.HttpConnectionManager:
    """The Kong HTTP listener's HCM of the gateway proxy, fused with its mesh snapshot."""
    registry = default_registry()
    resources = [parse_document(d, registry) for d in load_documents(MESH + policies)]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    ctx = build_mesh_context(
        mesh, dps, [r for r in resources if r.type.is_policy], (CERTS / "ca.pem").read_text()
    )
    ir = build_proxy_ir(ctx, "edge-1", IDENTITY, mesh_leg.mesh_services(entities))
    base = Snapshot.of_resources(translate_packed(ir))
    fused = mesh_leg.fuse(base, translate("default", entities, [ListenAddress("127.0.0.1", 8000)]))
    assert not [r.name for r in fused[types.ROUTE] if r.name.startswith(mesh_leg.LEG_ROUTES_PREFIX)]
    (res,) = [r for r in fused[types.LISTENER] if r.name == "kong:http:127.0.0.1:8000"]
    listener = listener_pb2.Listener()
    res.packed.Unpack(listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[-1].filters[-1].typed_config.Unpack(hcm)
    return hcm


def _logs(hcm: hcm_pb2.HttpConnectionManager) -> list[tuple[str, str, str]]:
    """(path, format, CEL filter) of each access log."""
    out = []
    for log in hcm.access_log:
        config = file_pb2.FileAccessLog()
        log.typed_config.Unpack(config)
        expression = ""
        if log.HasField("filter"):
            cel = cel_pb2.ExpressionFilter()
            log.filter.extension_filter.typed_config.Unpack(cel)
            expression = cel.expression
        out.append((config.path, config.log_format.text_format_source.inline_string, expression))
    return out


def test_a_leg_service_rule_logs_the_routes_to_that_service_only() -> None:
    policies = _access_log("edge-to-backend", "{kind: MeshService, name: backend}", "/tmp/edge.log")
    hcm = _hcm(policies, _entities(b="backend.mesh", w="web.mesh", ext="example.com"))
    assert _logs(hcm) == [
        ("/tmp/edge.log", "edge backend OUTBOUND %REQ(:PATH)%\n", 'xds.cluster_name in ["backend"]')
    ]


def test_a_mesh_rule_logs_every_route_with_its_destination() -> None:
    policies = _access_log("edge-all", "{kind: Mesh}", "/tmp/edge.log")
    hcm = _hcm(policies, _entities(b="backend.mesh", w="web.mesh", ext="example.com"))
    assert _logs(hcm) == [
        ("/tmp/edge.log", "edge * OUTBOUND %REQ(:PATH)%\n", '!(xds.cluster_name in ["backend", "web"])'),
        ("/tmp/edge.log", "edge backend OUTBOUND %REQ(:PATH)%\n", 'xds.cluster_name in ["backend"]'),
        ("/tmp/edge.log", "edge web OUTBOUND %REQ(:PATH)%\n", 'xds.cluster_name in ["web"]'),
    ]


def test_the_same_log_for_every_destination_has_no_filter() -> None:
    policies = _access_log(
        "edge-all", "{kind: Mesh}", "/tmp/edge.log", fmt="%KUMA_SOURCE_SERVICE% %REQ(:PATH)%"
    )
    hcm = _hcm(policies, _entities(b="backend.mesh", ext="example.com"))
    assert _logs(hcm) == [("/tmp/edge.log", "edge %REQ(:PATH)%\n", "")]


def test_a_kong_service_with_its_own_cluster_is_logged_as_its_leg() -> None:
    policies = _access_log("edge-to-backend", "{kind: MeshService, name: backend}", "/tmp/edge.log")
    own = {**_service("b2", "backend.mesh"), "connect_timeout": 1000}
    entities = _entities(b="backend.mesh")
    entities["services"]["b2"] = own
    entities["routes"]["r-b2"] = {"id": "r-b2", "name": "b2", "paths": ["/b2"], "service": {"id": "b2"}}
    assert _logs(_hcm(policies, entities))[0][2] == (
        'xds.cluster_name in ["backend", "kong:default:mesh-leg:b2"]'
    )


def test_no_policy_no_access_log_nor_tracer() -> None:
    hcm = _hcm("", _entities(b="backend.mesh", ext="example.com"))
    assert not hcm.access_log
    assert not hcm.HasField("tracing")


def test_meshtrace_sets_the_tracer_of_the_kong_listeners() -> None:
    hcm = _hcm(TRACE, _entities(b="backend.mesh"))
    assert hcm.tracing.provider.name == "envoy.tracers.zipkin"
    assert hcm.tracing.overall_sampling.value == 50
    # without any mesh leg too
    assert _hcm(TRACE, _entities(ext="example.com")).tracing.overall_sampling.value == 50


def test_a_kong_tracing_plugin_wins_over_meshtrace() -> None:
    zipkin = {"id": "z", "name": "zipkin", "enabled": True,
              "config": {"http_endpoint": "http://127.0.0.1:9999/api/v2/spans", "sample_ratio": 1}}  # fmt: skip
    kong_only = _hcm("", _entities([zipkin], b="backend.mesh")).tracing
    both = _hcm(TRACE, _entities([zipkin], b="backend.mesh")).tracing
    assert kong_only.HasField("provider")
    assert both == kong_only
