"""A service whose instances are all in other zones keeps its protocol: a client's outbound and cluster take it
from the remote ingresses' ``availableServices`` tags (an HTTP service stays HTTP, its cluster HTTP/2 over mTLS, as
for a local one), not the outbound's missing ``kuma.io/protocol`` tag."""

from __future__ import annotations

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Protocol
from isthmus.resources.registry import Resource, load_documents, parse_document

REG = default_registry()
DOCS = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: Dataplane
mesh: default
name: client
networking:
  address: 10.0.0.9
  inbound:
  - port: 8080
    tags: {kuma.io/service: client, kuma.io/zone: zone-a}
  outbound:
  - port: 7000
    tags: {kuma.io/service: remote-http}
  - port: 7001
    tags: {kuma.io/service: remote-tcp}
  - port: 7002
    tags: {kuma.io/service: remote-mixed}
  - port: 7003
    tags: {kuma.io/service: nowhere}
"""
INGRESS = """
type: ZoneIngress
name: zi-b
zone: zone-b
networking: {address: 0.0.0.0, port: 10001, advertisedAddress: 203.0.113.7, advertisedPort: 443}
availableServices:
- {mesh: default, instances: 2, tags: {kuma.io/service: remote-http, kuma.io/protocol: http, kuma.io/zone: zone-b}}
- {mesh: default, instances: 1, tags: {kuma.io/service: remote-tcp, kuma.io/zone: zone-b}}
- {mesh: default, instances: 1, tags: {kuma.io/service: remote-mixed, kuma.io/protocol: http, version: v1}}
- {mesh: default, instances: 1, tags: {kuma.io/service: remote-mixed, kuma.io/protocol: grpc, version: v2}}
"""


def _parse(text: str) -> list[Resource]:
    return [parse_document(d, REG) for d in load_documents(text)]


def test_remote_only_services_keep_their_protocol() -> None:
    mesh, client = _parse(DOCS)
    ctx = build_mesh_context(mesh, [client], [], "CA", ingresses=_parse(INGRESS), zone="zone-a")
    ir = build_proxy_ir(ctx, "client", Identity("cert", "key"))
    outbound = {o.service: o.protocol for o in ir.outbounds}
    assert outbound == {
        "remote-http": Protocol.HTTP,
        "remote-tcp": Protocol.TCP,
        "remote-mixed": Protocol.TCP,  # instances disagree: tcp, as for local instances
        "nowhere": Protocol.TCP,  # unknown anywhere: the outbound's tags decide, as before
    }
    clusters = {c.name: c.protocol for c in ir.clusters if c.name.startswith("remote-")}
    assert clusters == {
        "remote-http": Protocol.HTTP2,
        "remote-tcp": Protocol.TCP,
        "remote-mixed": Protocol.TCP,
    }
