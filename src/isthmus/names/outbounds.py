"""What a proxy gets from the mesh's service names: outbounds by ``backendRef``, listeners on VIPs, clusters
whose endpoints are the selected Dataplanes' inbounds (or a MeshExternalService's endpoints), and its DNS table.

Called by :func:`isthmus.ir.build.build_proxy_ir` on the base IR, before the policy plug-ins run, so every
policy applies to these outbounds as to the others (a MeshService outbound's ``service`` is the MeshService's
name: ``to: {kind: MeshService, name}`` selects it).

VIP listeners: a proxy gets an outbound listener on ``VIP:port`` for every MeshService it may reach (mode
Everywhere or Exclusive: all; ReachableBackends: those its ``transparentProxying.reachableBackends.refs`` list),
every MeshExternalService and MeshMultiZoneService, and (unless the mode is Exclusive) every
``<kuma.io/service>.mesh`` legacy VIP, when it resolves names through the mesh: its agent serves DNS
(``isthmus dp run --dns-port``, the label :data:`DNS_PORT_LABEL`) or it uses transparent proxying. VIP
listeners bind with ``freebind``; the VIP range must reach the proxy's network namespace (transparent proxying,
or ``ip route add local 240.0.0.0/4 dev lo`` there).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from isthmus.context.mesh_context import MeshContext
from isthmus.ir.model import (
    Cluster,
    Endpoint,
    EndpointSet,
    MeshTls,
    OutboundListener,
    Protocol,
    ProxyIR,
)
from isthmus.ir.names import DnsRecord, DnsTable, ExternalTls, ExternalUpstream
from isthmus.names import vips
from isthmus.names.selection import NAMESPACE, ORIGIN, ZONE, effective_labels, endpoints
from isthmus.resources.dataplane import DataplaneSpec, Outbound, TransparentProxying
from isthmus.resources.mesh import MeshServicesMode
from isthmus.resources.meshservice import (
    MeshExternalServiceDocument,
    MeshMultiZoneServiceDocument,
    MeshServiceDocument,
    MeshServicePort,
    MultiZonePort,
)
from isthmus.resources.registry import Resource

DNS_PORT_LABEL = "isthmus.io/dns-port"
LOOPBACK = "127.0.0.1"
LEGACY_PORT = 80  # Kuma's serviceVipPort: every legacy VIP also listens on 80


def _docs(ctx: MeshContext, kind: str) -> dict[str, Resource]:
    return {r.name: r for r in ctx.policies_of(kind)}


def handles(ctx: MeshContext, outbound: Outbound) -> bool:
    """Whether this module builds the outbound (a backendRef to a real MeshService, MeshExternalService or
    MeshMultiZoneService); other outbounds stay the base IR's (``kuma.io/service`` ones)."""
    ref = outbound.backend_ref
    if ref is None or ref.name is None:
        return False
    if ref.kind == "MeshService":
        return ref.name in _docs(ctx, "MeshService")
    return True


def dns_port(dp: Resource) -> int | None:
    raw = dp.labels.get(DNS_PORT_LABEL, "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else None


def _transparent(dp: Resource) -> TransparentProxying | None:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    return spec.networking.transparent_proxying


def _protocol(app: str) -> Protocol:
    if app == "http":
        return Protocol.HTTP
    if app in ("http2", "grpc"):
        return Protocol.HTTP2
    return Protocol.TCP


class _Builder:
    def __init__(self, ir: ProxyIR, ctx: MeshContext, dp: Resource, tls: MeshTls | None) -> None:
        self.ir, self.ctx, self.dp, self.tls = ir, ctx, dp, tls
        self.clusters: dict[str, Cluster] = {c.name: c for c in ir.clusters}
        self.endpoint_sets: dict[str, EndpointSet] = {e.cluster: e for e in ir.endpoints}
        self.outbounds: list[OutboundListener] = list(ir.outbounds)
        self.taken = {(o.address, o.port) for o in ir.outbounds}
        self.records: dict[str, set[str]] = {}
        self.services = _docs(ctx, "MeshService")
        self.externals = _docs(ctx, "MeshExternalService")
        self.multizone = _docs(ctx, "MeshMultiZoneService")

    # -- clusters ------------------------------------------------------------------------------------------------
    def _add_cluster(self, cluster: Cluster, eps: tuple[Endpoint, ...] | None) -> str:
        if cluster.name not in self.clusters:
            self.clusters[cluster.name] = cluster
            if eps is not None:
                self.endpoint_sets[cluster.name] = EndpointSet(cluster.name, eps)
        return cluster.name

    def _mesh_cluster(self, name: str, service: str, app: str, identity: str, eps: list[Endpoint]) -> str:
        proto = _protocol(app)
        cluster = Cluster(
            name=name,
            protocol=Protocol.HTTP2 if proto is not Protocol.TCP else Protocol.TCP,
            eds=True,
            tls=self.tls,
            verify_spiffe_id=f"spiffe://{self.ctx.name}/{identity}" if self.tls is not None else "",
            service=service,
        )
        ordered = tuple(sorted(set(eps), key=lambda e: (e.address, e.port, e.locality)))
        return self._add_cluster(cluster, ordered)

    def ms_cluster(self, res: Resource, port: MeshServicePort) -> str:
        doc = res.spec
        assert isinstance(doc, MeshServiceDocument)
        served = [s for s in endpoints(doc, port, self.ctx.dataplanes) if s.ready]
        identity = _identity(doc, [s.service for s in endpoints(doc, port, self.ctx.dataplanes)], res.name)
        labels = res.labels
        zone = labels.get(ZONE, "") if labels.get(ORIGIN) == "global" else ""
        name = f"{self.ctx.name}_{res.name}_{labels.get(NAMESPACE, '')}_{zone}_msvc_{port.port}"
        eps = [Endpoint(s.address, s.port, s.zone) for s in served]
        return self._mesh_cluster(name, res.name, port.app_protocol, identity, eps)

    def mzs_cluster(self, res: Resource, port: MultiZonePort) -> str:
        doc = res.spec
        assert isinstance(doc, MeshMultiZoneServiceDocument)
        selector = doc.spec.selector.mesh_service
        eps: list[Endpoint] = []
        identities: list[str] = []
        for ms in self.services.values():
            if not selector.matches(effective_labels(ms.labels, ms.name, "")):
                continue
            ms_doc = ms.spec
            assert isinstance(ms_doc, MeshServiceDocument)
            for ms_port in ms_doc.spec.ports:
                if ms_port.port == port.port:
                    served = endpoints(ms_doc, ms_port, self.ctx.dataplanes)
                    identities.extend(s.service for s in served)
                    eps.extend(Endpoint(s.address, s.port, s.zone) for s in served if s.ready)
        identity = sorted(set(identities))[0] if identities else res.name
        name = f"{self.ctx.name}_{res.name}___mzsvc_{port.port}"
        return self._mesh_cluster(name, res.name, port.app_protocol, identity, eps)

    def mes_cluster(self, res: Resource) -> str:
        doc = res.spec
        assert isinstance(doc, MeshExternalServiceDocument)
        spec = doc.spec
        eps = tuple(Endpoint(e.address, e.port) for e in spec.endpoints or [])
        resolve = any(not e.is_ip for e in spec.endpoints or [])
        cluster = Cluster(
            name=f"{self.ctx.name}_{res.name}___extsvc_{spec.match.port}",
            protocol=_protocol(spec.match.protocol),
            eds=False,
            endpoints=eps,
            service=res.name,
            external=ExternalUpstream(resolve_dns=resolve, tls=_external_tls(doc, resolve)),
        )
        return self._add_cluster(cluster, None)

    def legacy_cluster(self, service: str) -> str:
        eps = [Endpoint(e.address, e.port) for e in self.ctx.endpoints.get(service, ()) if e.ready]
        return self._mesh_cluster(service, service, self.ctx.service_protocol(service), service, eps)

    # -- listeners -----------------------------------------------------------------------------------------------
    def listen(self, address: str, port: int, service: str, app: str, cluster: str) -> bool:
        if (address, port) in self.taken:
            return False
        self.taken.add((address, port))
        proto = _protocol(app)
        name = f"outbound:{address}:{port}"
        self.outbounds.append(
            OutboundListener(
                name=name,
                address=address,
                port=port,
                service=service,
                protocol=proto,
                cluster=cluster,
                route_config=name if proto is not Protocol.TCP else "",
            )
        )
        return True

    def record(self, hostname: str, vip: str) -> None:
        self.records.setdefault(hostname, set()).add(vip)

    def explicit(self, outbound: Outbound) -> None:
        ref = outbound.backend_ref
        assert ref is not None and ref.name is not None
        address = outbound.address or LOOPBACK
        if ref.kind == "MeshService":
            res = self.services[ref.name]
            doc = res.spec
            assert isinstance(doc, MeshServiceDocument)
            port = _port(doc.spec.ports, ref.port)
            if port is not None:
                cluster = self.ms_cluster(res, port)
                self.listen(address, outbound.port, res.name, port.app_protocol, cluster)
        elif ref.kind == "MeshMultiZoneService" and ref.name in self.multizone:
            res = self.multizone[ref.name]
            mdoc = res.spec
            assert isinstance(mdoc, MeshMultiZoneServiceDocument)
            mport = _port(mdoc.spec.ports, ref.port)
            if mport is not None:
                self.listen(
                    address, outbound.port, res.name, mport.app_protocol, self.mzs_cluster(res, mport)
                )
        elif ref.kind == "MeshExternalService" and ref.name in self.externals:
            res = self.externals[ref.name]
            edoc = res.spec
            assert isinstance(edoc, MeshExternalServiceDocument)
            self.listen(address, outbound.port, res.name, edoc.spec.match.protocol, self.mes_cluster(res))

    def vip_listeners(self, mode: MeshServicesMode, reachable: set[tuple[str, str]] | None) -> None:
        for res in self.services.values():
            doc = res.spec
            assert isinstance(doc, MeshServiceDocument)
            if mode is MeshServicesMode.DISABLED:
                break
            if reachable is not None and ("MeshService", res.name) not in reachable:
                continue
            for vip in _vips(doc.status.vips if doc.status else []):
                for port in doc.spec.ports:
                    self.listen(vip, port.port, res.name, port.app_protocol, self.ms_cluster(res, port))
                for address in doc.status.addresses if doc.status else []:
                    self.record(address.hostname, vip)
        for res in self.multizone.values():
            mdoc = res.spec
            assert isinstance(mdoc, MeshMultiZoneServiceDocument)
            if reachable is not None and ("MeshMultiZoneService", res.name) not in reachable:
                continue
            for vip in _vips(mdoc.status.vips if mdoc.status else []):
                for mport in mdoc.spec.ports:
                    self.listen(vip, mport.port, res.name, mport.app_protocol, self.mzs_cluster(res, mport))
                for address in mdoc.status.addresses if mdoc.status else []:
                    self.record(address.hostname, vip)
        for res in self.externals.values():
            edoc = res.spec
            assert isinstance(edoc, MeshExternalServiceDocument)
            if reachable is not None and ("MeshExternalService", res.name) not in reachable:
                continue
            ext_vip = edoc.status.vip.ip if edoc.status and edoc.status.vip else None
            if ext_vip:
                self.listen(
                    ext_vip, edoc.spec.match.port, res.name, edoc.spec.match.protocol, self.mes_cluster(res)
                )
                for address in edoc.status.addresses if edoc.status else []:
                    self.record(address.hostname, ext_vip)
        if mode is MeshServicesMode.EXCLUSIVE:
            return
        taken: set[str] = set()
        tp = _transparent(self.dp)
        only = set(tp.reachable_services) if tp is not None and tp.reachable_services else None
        # every service of the mesh: this zone's and those other zones' ingresses offer (Kuma's .mesh names
        # cover services with no local instance too; their cluster reaches them through the ingress)
        for service in sorted(set(self.ctx.endpoints) | set(self.ctx.remote.by_service)):
            if reachable is not None and ("kuma.io/service", service) not in reachable:
                continue
            if only is not None and service not in only:  # Kuma's transparentProxying.reachableServices
                continue
            vip = vips.legacy_vip(self.ctx.name, service, taken)
            cluster = self.legacy_cluster(service)
            proto = (
                self.ctx.service_protocol(service)
                if service in self.ctx.endpoints
                else _remote_protocol(self.ctx, service)
            )
            for number in sorted({e.port for e in self.ctx.endpoints.get(service, ())} | {LEGACY_PORT}):
                self.listen(vip, number, service, proto, cluster)
            for hostname in legacy_hostnames(service):
                self.record(hostname, vip)

    def result(self, dns: int | None) -> ProxyIR:
        table = None
        if dns is not None:
            records = tuple(DnsRecord(h, tuple(sorted(ips))) for h, ips in sorted(self.records.items()))
            table = DnsTable(LOOPBACK, dns, records)
        return replace(
            self.ir,
            outbounds=tuple(self.outbounds),
            clusters=tuple(self.clusters.values()),
            endpoints=tuple(self.endpoint_sets.values()),
            dns=table,
        )


def _remote_protocol(ctx: MeshContext, service: str) -> str:
    """The ``kuma.io/protocol`` other zones' ingresses report for a service with no local instance, when they
    agree (else ``tcp``, as Kuma does)."""
    found = {dict(e.tags).get("kuma.io/protocol", "tcp") for e in ctx.remote.by_service.get(service, ())}
    return found.pop() if len(found) == 1 else "tcp"


def legacy_hostnames(service: str) -> list[str]:
    """Kuma's ``<service>.mesh`` and, for a name with '_', the dotted form (``a_b_c`` -> ``a.b.c.mesh``); only
    names that are valid DNS names are served."""
    out = [f"{service}.mesh"]
    if "_" in service:
        out.append(service.replace("_", ".") + ".mesh")
    return [h.lower() for h in out]


def _vips(listed: Any) -> list[str]:
    return [v.ip for v in listed if v.ip]


def _port(ports: Any, wanted: int | None) -> Any:
    if wanted is None:
        return ports[0] if len(ports) == 1 else None
    return next((p for p in ports if p.port == wanted), None)


def _identity(doc: MeshServiceDocument, services: list[str], fallback: str) -> str:
    for identity in doc.spec.identities or []:
        if identity.type == "ServiceTag":
            return identity.value
    tags = doc.spec.selector.dataplane_tags or {}
    if "kuma.io/service" in tags:
        return tags["kuma.io/service"]
    return sorted(set(services))[0] if services else fallback


_VERSIONS = {
    "TLS10": "TLSv1_0",
    "TLS11": "TLSv1_1",
    "TLS12": "TLSv1_2",
    "TLS13": "TLSv1_3",
    "TLSAuto": "TLS_AUTO",
}


def _external_tls(doc: MeshExternalServiceDocument, by_name: bool) -> ExternalTls | None:
    tls = doc.spec.tls
    if tls is None or not tls.enabled:
        return None
    v = tls.verification
    mode = v.mode.value if v is not None else "Secured"
    first_host = next((e.address for e in doc.spec.endpoints or [] if not e.is_ip), "")
    sni = (v.server_name if v is not None and v.server_name else "") or (first_host if by_name else "")
    exact = tuple(s.value for s in (v.subject_alt_names or []) if s.type == "Exact") if v else ()
    prefix = tuple(s.value for s in (v.subject_alt_names or []) if s.type == "Prefix") if v else ()
    if not exact and not prefix and sni:
        exact = (sni,)
    return ExternalTls(
        sni=sni,
        verify_ca=mode in ("Secured", "SkipSAN"),
        verify_san=mode in ("Secured", "SkipCA") and bool(exact or prefix),
        ca_pem=v.ca_cert.text() if v is not None and v.ca_cert is not None else "",
        san_exact=exact,
        san_prefix=prefix,
        client_cert_pem=v.client_cert.text() if v is not None and v.client_cert is not None else "",
        client_key_pem=v.client_key.text() if v is not None and v.client_key is not None else "",
        min_version=_VERSIONS.get(tls.version.min or "", "") if tls.version else "",
        max_version=_VERSIONS.get(tls.version.max or "", "") if tls.version else "",
        allow_renegotiation=tls.allow_renegotiation,
    )


def _reachable(dp: Resource) -> set[tuple[str, str]] | None:
    tp = _transparent(dp)
    if tp is None or tp.reachable_backends is None:
        return None
    return {(ref.kind, ref.name) for ref in tp.reachable_backends.refs if ref.name}


def extend(ir: ProxyIR, ctx: MeshContext, dp: Resource, tls: MeshTls | None) -> ProxyIR:
    """The base IR with the outbounds, clusters and DNS table the mesh's names give this proxy."""
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    explicit = [o for o in spec.networking.outbound if handles(ctx, o)]
    dns = dns_port(dp)
    uses_vips = dns is not None or _transparent(dp) is not None
    if not explicit and not uses_vips:
        return ir
    builder = _Builder(ir, ctx, dp, tls)
    for outbound in explicit:
        builder.explicit(outbound)
    if uses_vips:
        mode = ctx.spec.mesh_services_mode
        reachable = _reachable(dp) if mode is MeshServicesMode.REACHABLE_BACKENDS else None
        builder.vip_listeners(mode, reachable)
    return builder.result(dns)
