"""A small mesh to apply policies to, as YAML documents, and the proxy Isthmus builds for one of its Dataplanes.

The mesh is ``m``; ``web-1`` (127.0.0.1, inbound 20001 -> 8001, ``kuma.io/service: web``, HTTP) is the proxy the
tests look at, with one outbound for each destination service (10001, 10002, ...)."""

from __future__ import annotations

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.ir.model import OutboundListener, ProxyIR
from isthmus.resources.registry import Resource, load_documents, parse_document

REG = default_registry()


def dataplane(
    name: str, address: str, port: int, service_port: int, service: str, protocol: str = "http", **tags: str
) -> str:
    """A Dataplane document with one inbound of ``service`` (``kuma.io/protocol``: ``protocol``, then ``tags``)."""
    extra = "".join(f", {k}: {v}" for k, v in tags.items())
    return f"""
---
type: Dataplane
mesh: m
name: {name}
networking:
  address: {address}
  inbound:
  - port: {port}
    servicePort: {service_port}
    tags: {{kuma.io/service: {service}, kuma.io/protocol: {protocol}{extra}}}
"""


def web_mesh(*services: str) -> str:
    """The Mesh ``m`` and the Dataplane ``web-1`` with an outbound to each of ``services``."""
    outbounds = "".join(
        f"  - port: {10001 + i}\n    tags: {{kuma.io/service: {service}}}\n"
        for i, service in enumerate(services)
    )
    web = dataplane("web-1", "127.0.0.1", 20001, 8001, "web")
    return "type: Mesh\nname: m\n" + web + "  outbound:\n" + outbounds


def resources(docs: str) -> tuple[Resource, list[Resource], list[Resource]]:
    """The mesh (the first document), the Dataplanes and the policies of ``docs``."""
    rs = [parse_document(d, REG) for d in load_documents(docs)]
    return rs[0], [r for r in rs if r.type.kind == "Dataplane"], [r for r in rs if r.type.is_policy]


def proxy(docs: str, *policies: Resource, name: str = "web-1") -> ProxyIR:
    """The proxy of the Dataplane ``name`` in the mesh of ``docs``, with ``policies`` besides those of ``docs``."""
    mesh, dataplanes, own = resources(docs)
    return build_proxy_ir(build_mesh_context(mesh, dataplanes, [*own, *policies]), name, None)


def outbound(ir: ProxyIR, service: str = "backend") -> OutboundListener:
    """The proxy's outbound to ``service``."""
    return next(o for o in ir.outbounds if o.service == service)
