"""Build one proxy's IR from its mesh context. Pure: same inputs, same IR."""

from __future__ import annotations

from dataclasses import dataclass

from isthmus.context.mesh_context import MeshContext, gateway_listen
from isthmus.ingress.remote import localize
from isthmus.ir import transparent
from isthmus.ir.model import (
    Cluster,
    Endpoint,
    EndpointSet,
    InboundListener,
    MeshTls,
    OutboundListener,
    Protocol,
    ProxyIR,
    Secret,
    TlsMode,
)
from isthmus.names import outbounds as names
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.mesh import MtlsMode
from isthmus.resources.registry import Resource
from isthmus.xds.node import node_id as node_id
from isthmus.xds.node import parse_node_id as parse_node_id

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Identity:
    """The workload certificate issued to this proxy."""

    certificate_chain: str
    private_key: str


def identity_secret_name(mesh: str) -> str:
    return f"identity_cert:secret:{mesh}"


def ca_secret_name(mesh: str) -> str:
    return f"mesh_ca:secret:{mesh}"


def _protocol(tag_value: str) -> Protocol:
    if tag_value == "http":
        return Protocol.HTTP
    if tag_value in ("http2", "grpc"):
        return Protocol.HTTP2
    return Protocol.TCP


def _remote_protocol(ctx: MeshContext, service: str) -> str:
    """The protocol every instance of ``service`` behind other zones' ingresses agrees on (their
    ``availableServices`` tags), else "" (as :meth:`MeshContext.service_protocol`: disagreement means tcp)."""
    found = {dict(e.tags).get("kuma.io/protocol", "tcp") for e in ctx.remote.by_service.get(service, ())}
    return found.pop() if len(found) == 1 else ("tcp" if found else "")


def gateway_leg_name(service: str) -> str:
    """The RouteConfiguration name of a gateway's mesh leg to ``service`` (an outbound without a listener: Kong's
    routes reach its cluster; :mod:`isthmus.gateway.mesh_leg` takes the mesh's route policies from it)."""
    return f"gateway-leg:{service}"


def build_proxy_ir(
    ctx: MeshContext,
    dataplane_name: str,
    identity: Identity | None,
    gateway_services: frozenset[str] = frozenset(),
) -> ProxyIR:
    """``gateway_services``: for a gateway proxy, the mesh services its workspace's Kong Services name; each gets a
    cluster (mTLS with the gateway's identity) and an outbound without a listener, so the mesh's policies for that
    leg apply as for an outbound."""
    dp = ctx.dataplanes[dataplane_name]
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    net = spec.networking
    backend = ctx.spec.enabled_backend
    mtls_on = backend is not None
    if mtls_on and identity is None:
        raise ValueError(
            f"mesh {ctx.name!r} has mTLS enabled but no certificate was issued to {dataplane_name!r}"
        )
    tls = MeshTls(identity_secret_name(ctx.name), ca_secret_name(ctx.name)) if mtls_on else None
    if backend is None:
        tls_mode = TlsMode.OFF
    else:
        tls_mode = TlsMode.PERMISSIVE if backend.mode is MtlsMode.PERMISSIVE else TlsMode.STRICT

    clusters: dict[str, Cluster] = {}
    endpoint_sets: list[EndpointSet] = []
    inbounds: list[InboundListener] = []
    gateway_callers = tuple(f"spiffe://{ctx.name}/{s}" for s in ctx.gateway_services) if mtls_on else ()
    for inbound in net.inbound:
        address = inbound.address or net.address
        service_port = inbound.service_port or inbound.port
        local = f"localhost:{service_port}"
        protocol = _protocol(inbound.protocol)
        clusters[local] = Cluster(
            name=local,
            protocol=protocol,
            eds=False,
            endpoints=(Endpoint(inbound.service_address or LOCALHOST, service_port),),
        )
        inbounds.append(
            InboundListener(
                name=f"inbound:{address}:{inbound.port}",
                address=address,
                port=inbound.port,
                service=inbound.service,
                protocol=protocol,
                local_cluster=local,
                tls_mode=tls_mode,
                tls=tls,
                trust_domain_prefix=f"spiffe://{ctx.name}/",
                permissions=None,  # set by the MeshTrafficPermission plug-in when mTLS is on
                gateway_callers=gateway_callers if protocol is not Protocol.TCP else (),
            )
        )

    listen = gateway_listen(dp) if net.gateway is not None and mtls_on else None
    if listen is not None:
        # a gateway serving Kong routes accepts mesh mTLS on its proxy listener (gateway to gateway): an inbound
        # with the mesh's permissions whose local cluster is that listener's plaintext side (the listener is the
        # gateway's; isthmus.gateway.mesh_leg.fuse moves this inbound's filter chain into it)
        host, port = listen
        local = f"localhost:{port}"
        clusters[local] = Cluster(
            name=local,
            protocol=Protocol.HTTP,
            eds=False,
            endpoints=(Endpoint(LOCALHOST if host in ("0.0.0.0", "::") else host, port),),
        )
        inbounds.append(
            InboundListener(
                name=f"inbound:{host}:{port}",
                address=host,
                port=port,
                service=net.gateway.tags.get("kuma.io/service", ""),  # type: ignore[union-attr]
                protocol=Protocol.HTTP,
                local_cluster=local,
                tls_mode=tls_mode,
                tls=tls,
                trust_domain_prefix=f"spiffe://{ctx.name}/",
                permissions=None,
                gateway_callers=gateway_callers,
            )
        )

    outbounds: list[OutboundListener] = []
    legs = [(o.service, o.backend_ref.port if o.backend_ref is not None else None, o.tags or {}, o.address or LOCALHOST, o.port) for o in net.outbound if not names.handles(ctx, o)]  # fmt: skip
    # a gateway's mesh leg: the mesh services its Kong configuration names (``<service>.mesh``), without a listener
    # (listed or not: Kong's routes take the leg's route policies from its ``gateway-leg:`` RouteConfiguration)
    legs += [(s, None, {}, "", 0) for s in sorted(gateway_services)]
    for service, port_filter, tags, address, port in legs:
        candidates = [e for e in ctx.endpoints.get(service, ()) if e.ready]
        cluster_name = service
        if port_filter is not None and any(e.port == port_filter for e in candidates):
            candidates = [e for e in candidates if e.port == port_filter]
            cluster_name = f"{service}_{port_filter}"
        if ctx.endpoints.get(service):
            protocol = _protocol(ctx.service_protocol(service))
        elif remote := _remote_protocol(ctx, service):  # only in other zones: their instances' protocol
            protocol = _protocol(remote)
        else:
            protocol = _protocol(tags.get("kuma.io/protocol", "tcp" if port else "http"))
        name = f"outbound:{address}:{port}" if port else gateway_leg_name(service)
        if cluster_name not in clusters:
            clusters[cluster_name] = Cluster(
                name=cluster_name,
                protocol=Protocol.HTTP2 if protocol is not Protocol.TCP else Protocol.TCP,
                eds=True,
                tls=tls,
                verify_spiffe_id=f"spiffe://{ctx.name}/{service}" if mtls_on else "",
                service=service,
            )
            endpoint_sets.append(
                EndpointSet(
                    cluster_name,
                    tuple(
                        sorted(
                            {Endpoint(e.address, e.port) for e in candidates},
                            key=lambda e: (e.address, e.port),
                        )
                    ),
                )
            )
        outbounds.append(
            OutboundListener(
                name=name,
                address=address,
                port=port,
                service=service,
                protocol=protocol,
                cluster=cluster_name,
                route_config=name if protocol is not Protocol.TCP else "",
            )
        )

    secrets: tuple[Secret, ...] = ()
    if mtls_on and identity is not None:
        secrets = (
            Secret(identity_secret_name(ctx.name), identity.certificate_chain, identity.private_key),
            Secret(ca_secret_name(ctx.name), trusted_ca=ctx.ca_certificate),
        )
    base = ProxyIR(
        node_id=node_id(ctx.name, dp.name),
        mesh=ctx.name,
        name=dp.name,
        inbounds=tuple(inbounds),
        outbounds=tuple(outbounds),
        clusters=tuple(clusters.values()),
        endpoints=tuple(endpoint_sets),
        secrets=secrets,
    )
    base = names.extend(base, ctx, dp, tls)  # backendRef outbounds, VIP listeners, DNS (isthmus.names)
    base = transparent.apply(base, ctx, dp)  # a transparent proxy's catch-all listeners
    # other zones through their ingresses, localities and priorities (isthmus.ingress), once the balancer is known
    return localize(apply_policies(base, ctx, dp), ctx, dp)


def apply_policies(ir: ProxyIR, ctx: MeshContext, dp: Resource) -> ProxyIR:
    """Run every policy plug-in, in order, over the base IR (see :mod:`isthmus.policies.catalog`)."""
    from isthmus.policies.catalog import plugins
    from isthmus.policies.plugin import PolicyInputs

    for plugin in plugins():
        kind = plugin.resource_type.kind
        ir = plugin.apply(ir, PolicyInputs(ctx, dp, ctx.policies_of(kind)))
    return ir
