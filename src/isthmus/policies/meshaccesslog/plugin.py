"""MeshAccessLog: access-log backends on a proxy's inbound (``from``/``rules``) and outbound (``to``) listeners.

Kuma's placeholders are resolved here, per listener, into literals or Envoy command operators:

============================================  ==============================  ======================================
placeholder                                   outbound                        inbound
============================================  ==============================  ======================================
``%KUMA_MESH%``                               the mesh                        the mesh
``%KUMA_SOURCE_SERVICE%``                     the proxy's service             ``unknown`` (as Kuma)
``%KUMA_DESTINATION_SERVICE%``                the outbound's service          the inbound's service
``%KUMA_SOURCE_ADDRESS%``                     ``%DOWNSTREAM_REMOTE_ADDRESS%`` ``%DOWNSTREAM_REMOTE_ADDRESS%``
``%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%``        the Dataplane's address         ``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``
``%KUMA_TRAFFIC_DIRECTION%``                  ``OUTBOUND``                    ``INBOUND``
============================================  ==============================  ======================================

Envoy's own command operators pass through. A backend without a format gets Kuma's default format of the
listener's protocol (HTTP or TCP).

On a gateway proxy (``networking.gateway``) a mesh leg is an outbound like any other (its service's ``to`` items,
KUMA_DESTINATION_SERVICE the leg's service); the routes to destinations outside the mesh get the ``to: Mesh``
items with KUMA_DESTINATION_SERVICE ``*`` (Kuma's value on a gateway listener), in ``ProxyIR.gateway``.
:func:`isthmus.gateway.mesh_leg.fuse` puts both on the Kong listeners.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, OutboundListener, Protocol, ProxyIR
from isthmus.ir.observability import (
    GATEWAY_ANY_DESTINATION,
    TCP_JSON_ADDRESS_KEY,
    AccessLog,
    GatewayObservability,
    LogFormat,
    tcp_log_pipe,
)
from isthmus.policies.engine import Resolved, dataplane_spec, resolve_to_mesh_resource
from isthmus.policies.meshaccesslog.api import (
    Backend,
    BackendType,
    Conf,
    Format,
    FormatType,
    MeshAccessLogSpec,
)
from isthmus.policies.plugin import (
    PolicyInputs,
    ToFromPlugin,
    map_inbounds,
    map_outbounds,
    parse_conf,
    policy_type,
)

# Kuma's default formats (its MeshAccessLog reference), the placeholders resolved per listener
DEFAULT_HTTP = (
    '[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" '
    '"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" "%UPSTREAM_HOST%"'
)
DEFAULT_TCP = (
    "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->"
    "%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, "
    "received: %BYTES_RECEIVED% bytes"
)
UNKNOWN_SERVICE = "unknown"


@dataclass(frozen=True)
class Placeholders:
    mesh: str
    source_service: str
    destination_service: str
    source_address_without_port: str
    direction: str

    def resolve(self, text: str) -> str:
        for name, value in (
            ("%KUMA_MESH%", self.mesh),
            ("%KUMA_SOURCE_SERVICE%", self.source_service),
            ("%KUMA_DESTINATION_SERVICE%", self.destination_service),
            ("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", self.source_address_without_port),
            ("%KUMA_SOURCE_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            ("%KUMA_TRAFFIC_DIRECTION%", self.direction),
        ):
            text = text.replace(name, value)
        return text

    def resolve_any(self, value: Any) -> Any:
        """Every string of a JSON value (an OpenTelemetry body)."""
        if isinstance(value, str):
            return self.resolve(value)
        if isinstance(value, list):
            return [self.resolve_any(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve_any(v) for k, v in value.items()}
        return value


def _format(fmt: Format | None, protocol: Protocol, ph: Placeholders) -> LogFormat:
    if fmt is None:
        return LogFormat(plain=ph.resolve(DEFAULT_TCP if protocol is Protocol.TCP else DEFAULT_HTTP) + "\n")
    omit = bool(fmt.omit_empty_values)
    if fmt.type is FormatType.PLAIN:
        text = ph.resolve(fmt.plain or "")
        return LogFormat(plain=text if text.endswith("\n") else text + "\n", omit_empty=omit)
    return LogFormat(json=tuple((j.key, ph.resolve(j.value)) for j in fmt.json_ or ()), omit_empty=omit)


def otel_cluster(endpoint: str) -> str:
    return f"meshaccesslog:opentelemetry:{endpoint}"


def _backend(b: Backend, protocol: Protocol, ph: Placeholders, mesh: str, name: str) -> AccessLog:
    if b.type is BackendType.FILE:
        assert b.file is not None
        return AccessLog("file", _format(b.file.format, protocol, ph), path=b.file.path)
    if b.type is BackendType.TCP:
        assert b.tcp is not None
        fmt = _format(b.tcp.format, protocol, ph)
        if fmt.json:  # the agent reads the receiver from this key and removes it
            fmt = evolve(fmt, json=((TCP_JSON_ADDRESS_KEY, b.tcp.address), *fmt.json))
        else:
            fmt = evolve(fmt, plain=f"{b.tcp.address};{fmt.plain}")
        return AccessLog("tcp", fmt, path=tcp_log_pipe(mesh, name), address=b.tcp.address)
    otel = b.open_telemetry
    assert otel is not None
    default = DEFAULT_TCP if protocol is Protocol.TCP else DEFAULT_HTTP
    body = ph.resolve_any(otel.body) if otel.body is not None else {"stringValue": ph.resolve(default)}
    return AccessLog(
        "otel",
        LogFormat(),
        address=otel.endpoint,
        cluster=otel_cluster(otel.endpoint),
        body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        attributes=tuple((a.key, ph.resolve(a.value)) for a in otel.attributes or ()),
    )


def access_logs(
    conf: Conf, protocol: Protocol, ph: Placeholders, mesh: str, name: str
) -> tuple[AccessLog, ...]:
    return tuple(_backend(b, protocol, ph, mesh, name) for b in conf.backends or ())


class MeshAccessLogPlugin(ToFromPlugin):
    resource_type = policy_type("MeshAccessLog", "meshaccesslogs", MeshAccessLogSpec, "mal")
    order = 600
    conf_model = Conf

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        spec = dataplane_spec(inputs.dataplane)
        net = spec.networking
        services = spec.services
        own = services[0] if services else UNKNOWN_SERVICE
        mesh, name = inputs.dataplane.mesh, inputs.dataplane.name
        by_service: dict[str, Resolved] = {}

        def outbound(o: OutboundListener) -> OutboundListener:
            if o.service not in by_service:
                by_service[o.service] = self.resolve_outbound(inputs, o.service)
            conf = parse_conf(Conf, by_service[o.service])
            if conf is None or not conf.backends:
                return o
            ph = Placeholders(mesh, own, o.service, str(net.address), "OUTBOUND")
            return evolve(o, access_logs=access_logs(conf, o.protocol, ph, mesh, name))

        def inbound(i: InboundListener) -> InboundListener:
            conf = parse_conf(Conf, self.resolve_inbound(inputs, i))
            if conf is None or not conf.backends:
                return i
            ph = Placeholders(
                mesh, UNKNOWN_SERVICE, i.service, "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "INBOUND"
            )
            return evolve(i, access_logs=access_logs(conf, i.protocol, ph, mesh, name))

        ir = map_inbounds(map_outbounds(ir, outbound), inbound)
        if net.gateway is not None:  # the gateway's routes outside the mesh: the to: Mesh items
            conf = parse_conf(Conf, resolve_to_mesh_resource(inputs.policies, inputs.dataplane))
            if conf is not None and conf.backends:
                ph = Placeholders(mesh, own, GATEWAY_ANY_DESTINATION, str(net.address), "OUTBOUND")
                logs = access_logs(conf, Protocol.HTTP, ph, mesh, name)
                ir = evolve(ir, gateway=evolve(ir.gateway or GatewayObservability(), access_logs=logs))
        return ir


PLUGIN = MeshAccessLogPlugin()
