"""MeshTrace: the selected proxies trace their HTTP traffic (inbound and outbound listeners).

A Zipkin backend propagates B3 headers (Envoy's Zipkin tracer), an OpenTelemetry backend W3C trace context
(``traceparent``), as Kuma does. Spans carry the proxy's service (the Envoy node's cluster for Zipkin, the
``service_name`` for OpenTelemetry). Sampling percentages default to 100 (Kuma's defaults); they become the
HTTP connection manager's ``overall_sampling``, ``client_sampling`` and ``random_sampling``. A gateway proxy's
Kong listeners get the tracer too (``ProxyIR.gateway``, put there by :func:`isthmus.gateway.mesh_leg.fuse`) unless
a Kong zipkin or opentelemetry plugin configures one.
"""

from __future__ import annotations

from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, OutboundListener, Protocol, ProxyIR
from isthmus.ir.observability import GatewayObservability, TraceTag, Tracing
from isthmus.policies.engine import dataplane_spec, resolve_proxy
from isthmus.policies.meshaccesslog.api import split_address
from isthmus.policies.meshtrace.api import BackendType, Conf, MeshTraceSpec, zipkin_target
from isthmus.policies.plugin import (
    PolicyInputs,
    derived,
    map_inbounds,
    map_outbounds,
    parse_conf,
    policy_type,
)
from isthmus.resources.registry import ResourceType


def _pct(value: Any) -> float:
    return 100.0 if value is None else float(value)


def tracing(conf: Conf, service: str) -> Tracing | None:
    if not conf.backends:
        return None
    backend = conf.backends[0]
    sampling = conf.sampling
    common: dict[str, Any] = {
        "service_name": service,
        "overall": _pct(sampling.overall if sampling else None),
        "client": _pct(sampling.client if sampling else None),
        "random": _pct(sampling.random if sampling else None),
        "tags": tuple(
            TraceTag(t.name, literal=t.literal)
            if t.header is None
            else TraceTag(t.name, header=t.header.name, default=t.header.default or "")
            for t in conf.tags or ()
        ),
    }
    if backend.type is BackendType.ZIPKIN:
        z = backend.zipkin
        assert z is not None
        host, port, path = zipkin_target(z.url)
        return Tracing(
            "zipkin",
            cluster=f"meshtrace:zipkin:{host}:{port}",
            host=host,
            port=port,
            path=path,
            trace_id_128bit=bool(z.trace_id_128bit),
            api_version=z.api_version.value if z.api_version else "httpJson",
            shared_span_context=z.shared_span_context is not False,
            **common,
        )
    otel = backend.open_telemetry
    assert otel is not None
    host, port = split_address(otel.endpoint)
    return Tracing("otel", cluster=f"meshtrace:opentelemetry:{host}:{port}", host=host, port=port, **common)


class MeshTracePlugin:
    resource_type: ResourceType = policy_type("MeshTrace", "meshtraces", MeshTraceSpec, "mtr")
    order = 700

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        conf = parse_conf(Conf, resolve_proxy(inputs.policies, inputs.dataplane))
        if conf is None:
            return ir
        services = dataplane_spec(inputs.dataplane).services
        found = derived(tracing, conf, services[0] if services else inputs.dataplane.name)
        if found is None:
            return ir

        def outbound(o: OutboundListener) -> OutboundListener:
            return o if o.protocol is Protocol.TCP else evolve(o, tracing=found)

        def inbound(i: InboundListener) -> InboundListener:
            return i if i.protocol is Protocol.TCP else evolve(i, tracing=found)

        ir = map_inbounds(map_outbounds(ir, outbound), inbound)
        if dataplane_spec(inputs.dataplane).networking.gateway is not None:  # the gateway's Kong listeners
            ir = evolve(ir, gateway=evolve(ir.gateway or GatewayObservability(), tracing=found))
        return ir

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        resolved = resolve_proxy(inputs.policies, inputs.dataplane)
        if resolved.empty:
            return {"inbounds": [], "outbounds": []}
        return {
            "proxy": {"conf": dict(resolved.conf), "origins": [o.as_dict() for o in resolved.origins]},
            "inbounds": [],
            "outbounds": [],
        }


PLUGIN = MeshTracePlugin()
