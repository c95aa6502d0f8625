"""Clusters (local application and mesh services) and their endpoint sets."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from isthmus.ir.model import Cluster, Endpoint, EndpointSet, Protocol
from isthmus.xds.translate import names, resilience, timeouts, tls
from isthmus.xds.translate.common import ads, duration_ms, pack, socket_address

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _lb_endpoint(e: Endpoint) -> endpoint_components_pb2.LbEndpoint:
    out = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(e.address, e.port))
    )
    if e.weight != 1:
        out.load_balancing_weight.value = e.weight
    return out


def _lb_endpoints(endpoints: tuple[Endpoint, ...]) -> list[endpoint_components_pb2.LocalityLbEndpoints]:
    """One group per (priority, zone, affinity group), lowest priority first; endpoints without a zone and
    priority form one group without a locality, as before multi-zone."""
    if not endpoints:
        return []
    groups: dict[tuple[int, str, str], list[Endpoint]] = {}
    for e in endpoints:
        groups.setdefault((e.priority, e.locality, e.sub_zone), []).append(e)
    out = []
    for (priority, zone, sub_zone), members in sorted(groups.items()):
        group = endpoint_components_pb2.LocalityLbEndpoints(
            lb_endpoints=[_lb_endpoint(e) for e in members], priority=priority
        )
        if members[0].locality_weight:
            group.load_balancing_weight.value = members[0].locality_weight
        if sub_zone:
            group.locality.sub_zone = sub_zone
        if zone:
            group.locality.zone = zone
        out.append(group)
    return out


def cluster(ir: Cluster) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name=ir.name, connect_timeout=duration_ms(ir.connect_timeout_ms))
    if ir.eds:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads())
    else:
        out.type = cluster_pb2.Cluster.STATIC
        out.load_assignment.CopyFrom(
            endpoint_pb2.ClusterLoadAssignment(cluster_name=ir.name, endpoints=_lb_endpoints(ir.endpoints))
        )
    common = timeouts.http_protocol_options(ir.timeouts) if ir.protocol is not Protocol.TCP else None
    if ir.protocol is Protocol.HTTP2 or common is not None:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        if ir.protocol is Protocol.HTTP2:
            options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        else:
            options.explicit_http_config.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
        if common is not None:
            options.common_http_protocol_options.CopyFrom(common)
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    timeouts.cluster(out, ir.timeouts)
    resilience.cluster(out, ir)
    if ir.tls is not None:
        out.transport_socket.CopyFrom(
            tls.upstream_socket(ir.tls, ir.verify_spiffe_id, http2=ir.protocol is Protocol.HTTP2, sni=ir.sni)
        )
    names.external(out, ir)  # a MeshExternalService's upstream: DNS, its own TLS
    return out


def endpoints(ir: EndpointSet) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=ir.cluster, endpoints=_lb_endpoints(ir.endpoints))
    if ir.overprovisioning is not None:
        out.policy.overprovisioning_factor.value = ir.overprovisioning
    return out
