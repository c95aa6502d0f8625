"""Access logs, tracing and the dynamic-configuration listener (MeshAccessLog, MeshTrace, MeshMetric) as Envoy
protobufs.

* Access logs: ``envoy.access_loggers.file`` for File backends and for Tcp backends (written to the agent's FIFO,
  each line prefixed with its receiver, see :mod:`isthmus.dp.metrics`), ``envoy.access_loggers.open_telemetry``
  for OpenTelemetry backends (OTLP/gRPC to a cluster per collector).
* Tracing: the HTTP connection manager's ``tracing`` with the Zipkin or OpenTelemetry tracer.
* A gateway proxy's Kong listeners: the access logs and tracer of its mesh legs and of its other destinations, as
  a partial HTTP connection manager in the typed metadata of its ``gateway-leg:`` RouteConfigurations (never
  served; :func:`isthmus.gateway.mesh_leg.fuse` copies them onto the Kong HCMs).
* ``_isthmus:dynamicconfig``: a listener on an abstract unix socket answering ``GET /meshmetric`` with the
  MeshMetric configuration the agent serves.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from functools import lru_cache

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    config_source_pb2,
    grpc_service_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format
from opentelemetry.proto.common.v1 import common_pb2

from isthmus.ir.model import InboundListener, OutboundListener, ProxyIR
from isthmus.ir.observability import (
    DYNCONF_LISTENER,
    GATEWAY_ANY_DESTINATION,
    GATEWAY_HCM_METADATA,
    MESHMETRIC_PATH,
    AccessLog,
    CollectorCluster,
    GatewayObservability,
    LogFormat,
    Metrics,
    Tracing,
)
from isthmus.xds.translate.common import pack

FILE_LOGGER = "envoy.access_loggers.file"
OTEL_LOGGER = "envoy.access_loggers.open_telemetry"
ZIPKIN = "envoy.tracers.zipkin"
OTEL_TRACER = "envoy.tracers.opentelemetry"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECT_TIMEOUT_MS = 5000


def _format(fmt: LogFormat) -> substitution_format_string_pb2.SubstitutionFormatString:
    out = substitution_format_string_pb2.SubstitutionFormatString(omit_empty_values=fmt.omit_empty)
    if fmt.json:
        out.json_format.update({k: v for k, v in fmt.json})
    else:
        out.text_format_source.inline_string = fmt.plain
    return out


def _otel_logger(log: AccessLog) -> logs_service_pb2.OpenTelemetryAccessLogConfig:
    config = logs_service_pb2.OpenTelemetryAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=log.cluster,
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=log.cluster)
            ),
        ),
    )
    json_format.ParseDict(json.loads(log.body), config.body)
    for key, value in log.attributes:
        config.attributes.values.append(
            common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))  # type: ignore[attr-defined]
        )
    return config


@lru_cache(maxsize=4096)
def access_log(log: AccessLog) -> accesslog_pb2.AccessLog:
    if log.backend == "otel":
        return accesslog_pb2.AccessLog(name=OTEL_LOGGER, typed_config=pack(_otel_logger(log)))
    config = file_pb2.FileAccessLog(path=log.path, log_format=_format(log.format))
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(config))


def access_logs(logs: Iterable[AccessLog]) -> list[accesslog_pb2.AccessLog]:
    return [access_log(log) for log in logs]


def _percent(value: float) -> percent_pb2.Percent:
    return percent_pb2.Percent(value=value)


@lru_cache(maxsize=1024)
def hcm_tracing(t: Tracing) -> hcm_pb2.HttpConnectionManager.Tracing:
    if t.provider == "zipkin":
        provider = http_tracer_pb2.Tracing.Http(
            name=ZIPKIN,
            typed_config=pack(
                zipkin_pb2.ZipkinConfig(
                    collector_cluster=t.cluster,
                    collector_endpoint=t.path,
                    collector_hostname=t.host,
                    trace_id_128bit=t.trace_id_128bit,
                    shared_span_context={"value": t.shared_span_context},
                    collector_endpoint_version=(
                        zipkin_pb2.ZipkinConfig.HTTP_PROTO
                        if t.api_version == "httpProto"
                        else zipkin_pb2.ZipkinConfig.HTTP_JSON
                    ),
                )
            ),
        )
    else:
        provider = http_tracer_pb2.Tracing.Http(
            name=OTEL_TRACER,
            typed_config=pack(
                opentelemetry_pb2.OpenTelemetryConfig(
                    service_name=t.service_name,
                    grpc_service=grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=t.cluster)
                    ),
                )
            ),
        )
    tags = []
    for tag in t.tags:
        if tag.literal is not None:
            tags.append(
                custom_tag_pb2.CustomTag(
                    tag=tag.name, literal=custom_tag_pb2.CustomTag.Literal(value=tag.literal)
                )
            )
        else:
            header = custom_tag_pb2.CustomTag.Header(name=tag.header, default_value=tag.default)
            tags.append(custom_tag_pb2.CustomTag(tag=tag.name, request_header=header))
    return hcm_pb2.HttpConnectionManager.Tracing(
        overall_sampling=_percent(t.overall),
        client_sampling=_percent(t.client),
        random_sampling=_percent(t.random),
        custom_tags=tags,
        provider=provider,
    )


def decorate_hcm(
    manager: hcm_pb2.HttpConnectionManager, logs: tuple[AccessLog, ...], t: Tracing | None
) -> None:
    """Access logs and tracing of a listener's HTTP connection manager."""
    if logs:
        manager.access_log.extend(access_logs(logs))
    if t is not None:
        manager.tracing.CopyFrom(hcm_tracing(t))


# -- a gateway's Kong listeners (isthmus.gateway.mesh_leg.fuse) -------------------------------------------------
def gateway_hcm(logs: tuple[AccessLog, ...], t: Tracing | None) -> hcm_pb2.HttpConnectionManager:
    """Only the ``access_log`` and ``tracing`` fields a gateway's Kong HCMs get for some of their routes."""
    out = hcm_pb2.HttpConnectionManager()
    decorate_hcm(out, logs, t)
    return out


def mark_gateway_leg(rc: route_pb2.RouteConfiguration, leg: OutboundListener) -> route_pb2.RouteConfiguration:
    """A gateway leg's RouteConfiguration with, in its metadata, what the Kong routes to the leg log and trace."""
    if leg.access_logs or leg.tracing is not None:
        rc.metadata.typed_filter_metadata[GATEWAY_HCM_METADATA].Pack(
            gateway_hcm(leg.access_logs, leg.tracing)
        )
    return rc


def gateway_routes(ir: ProxyIR) -> list[route_pb2.RouteConfiguration]:
    """``gateway-leg:*``: what a gateway's Kong routes to destinations outside the mesh log, and its tracer."""
    g = ir.gateway
    if g is None or (not g.access_logs and g.tracing is None):
        return []
    rc = route_pb2.RouteConfiguration(name=f"gateway-leg:{GATEWAY_ANY_DESTINATION}")
    rc.metadata.typed_filter_metadata[GATEWAY_HCM_METADATA].Pack(gateway_hcm(g.access_logs, g.tracing))
    return [rc]


# -- collector clusters ------------------------------------------------------------------------------------------
def collector_clusters(ir: ProxyIR) -> list[CollectorCluster]:
    """The clusters the proxy's tracers and OpenTelemetry access logs send to, one per collector."""
    found: dict[str, CollectorCluster] = {}
    listeners: list[InboundListener | OutboundListener | GatewayObservability] = [*ir.inbounds, *ir.outbounds]
    if ir.gateway is not None:  # the gateway's Kong listeners (gateway_routes)
        listeners.append(ir.gateway)
    for listener in listeners:
        t = listener.tracing
        if t is not None and t.cluster not in found:
            found[t.cluster] = CollectorCluster(t.cluster, t.host, t.port, http2=t.provider == "otel")
        for log in listener.access_logs:
            if log.backend == "otel" and log.cluster not in found:
                host, _, port = log.address.rpartition(":")
                found[log.cluster] = CollectorCluster(log.cluster, host.strip("[]"), int(port), http2=True)
    return [found[name] for name in sorted(found)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)
def collector_cluster(c: CollectorCluster) -> cluster_pb2.Cluster:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=c.host, port_value=c.port)
            )
        )
    )
    out = cluster_pb2.Cluster(
        name=c.name,
        type=cluster_pb2.Cluster.STATIC if _is_ip(c.host) else cluster_pb2.Cluster.STRICT_DNS,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=c.name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )
    out.connect_timeout.FromMilliseconds(_CONNECT_TIMEOUT_MS)
    if not _is_ip(c.host):
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if c.http2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options={}
            )
        )
        out.typed_extension_protocol_options[_HTTP_OPTIONS].Pack(options)
    return out


def clusters(ir: ProxyIR) -> list[cluster_pb2.Cluster]:
    return [collector_cluster(c) for c in collector_clusters(ir)]


# -- the agent's dynamic configuration ---------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def dynconf_listener(metrics: Metrics) -> listener_pb2.Listener:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=MESHMETRIC_PATH),
        direct_response=route_components_pb2.DirectResponseAction(status=200),
    )
    route.direct_response.body.inline_string = metrics.conf
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="isthmus_dynamicconfig",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=DYNCONF_LISTENER,
            max_direct_response_body_size_bytes={"value": max(4096, len(metrics.conf.encode()) + 1)},
            virtual_hosts=[route_components_pb2.VirtualHost(name="dynconf", domains=["*"], routes=[route])],
            response_headers_to_add=[],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
        ],
    )
    return listener_pb2.Listener(
        name=DYNCONF_LISTENER,
        address=address_pb2.Address(pipe=address_pb2.Pipe(path=metrics.socket)),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
                    )
                ]
            )
        ],
    )


def listeners(ir: ProxyIR) -> list[listener_pb2.Listener]:
    return [dynconf_listener(ir.metrics)] if ir.metrics is not None else []
