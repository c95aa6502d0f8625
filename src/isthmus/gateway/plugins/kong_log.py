"""What Kong's logging and metrics plugins see of a request, as native Envoy configuration.

* Every route a logging/metrics/tracing plugin applies to carries route metadata ``isthmus.kong``: the Kong
  ``workspace``, ``route_id``, ``route_name``, ``service_id``, ``service_name`` and, per plugin name, the key of the
  configuration that applies there (:func:`mark`). Envoy's access logs live on the HCM, so each distinct
  configuration is one access log whose CEL filter selects the routes carrying its key (:func:`route_filter`).
* :func:`json_format` is Kong's log serializer (``kong/pdk/log.lua``'s ``serialize``) as an Envoy ``json_format``
  (file-log); :func:`serialize` builds the same object from a gRPC access-log entry (tcp-log, http-log, in the
  gateway agent's forwarder, :mod:`isthmus.gateway.log_forwarder`).

Differences from Kong's serializer: the request and response headers are a fixed list (:data:`REQUEST_HEADERS`,
:data:`RESPONSE_HEADERS`; Kong logs them all, with ``authorization`` redacted: here it is never logged), the
route and service are their ids and names (Kong logs the whole entities), ``consumer`` is what the auth filter
put in Kong's consumer headers (id, username, custom_id), there is no ``tries``, ``querystring`` nor
``authenticated_entity``, sizes count bodies only (Kong's count headers too), ``source`` is Envoy's response code
details in the file (``via_upstream``, ``direct_response``, ...), and ``started_at`` is a string in the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2  # noqa: F401

from isthmus.gateway.plugins import EnvoyRoute

METADATA = "isthmus.kong"
# the request's path as the client sent it (the router rewrites :path in place, and Kong's x-envoy-* headers are
# suppressed): recorded as filter state by a set_filter_state filter, enabled on the routes that log
URI_STATE = "isthmus.kong.request_uri"
URI_FILTER = "kong.log.request_uri"
_ENABLED = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
URI_HTTP_FILTER = {
    "name": URI_FILTER,
    "disabled": True,
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
        "on_request_headers": [
            {
                "object_key": URI_STATE,
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {"inline_string": "%REQ(:PATH)%"}},
            }
        ],
    },
}
CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
IDENTITY_FIELDS = ("workspace", "route_id", "route_name", "service_id", "service_name")
REQUEST_HEADERS = (
    "host",
    "user-agent",
    "accept",
    "content-type",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-credential-identifier",
    "x-anonymous-consumer",
)
RESPONSE_HEADERS = ("content-type", "content-length", "server", "via", "cache-control", "location")


def key(name: str, config: Any) -> str:
    """A configuration's key: equal configurations of one plugin share their access log."""
    dumped = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    text = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:16]


def mark(
    routes: list[EnvoyRoute], name: str, config_key: str, identity: Mapping[str, str | None] | None
) -> list[EnvoyRoute]:
    """``routes`` carrying the Kong identity and ``name``'s configuration key in their ``isthmus.kong``
    metadata."""
    out = []
    for r in routes:
        metadata = dict(r.get("metadata") or {})
        filter_metadata = dict(metadata.get("filter_metadata") or {})
        kong = dict(filter_metadata.get(METADATA) or {})
        for field in IDENTITY_FIELDS:
            value = (identity or {}).get(field)
            if value is not None:
                kong[field] = str(value)
        # Kong's metric labels: the route's name (else id), the service's name (else id)
        kong["route"] = kong.get("route_name") or kong.get("route_id", "")
        kong["service"] = kong.get("service_name") or kong.get("service_id", "")
        kong[name] = config_key
        filter_metadata[METADATA] = kong
        per_filter = {**r.get("typed_per_filter_config", {}), URI_FILTER: _ENABLED}
        out.append(
            {
                **r,
                "metadata": {**metadata, "filter_metadata": filter_metadata},
                "typed_per_filter_config": per_filter,
            }
        )
    return out


def route_filter(name: str, config_key: str) -> dict[str, Any]:
    """An access-log filter: the request's route carries ``name``'s configuration ``config_key``."""
    expression = f"xds.route_metadata.filter_metadata['{METADATA}']['{name}'] == '{config_key}'"
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": CEL_FILTER, "expression": expression},
        }
    }


def _meta(field: str) -> str:
    return f"%METADATA(ROUTE:{METADATA}:{field})%"


def json_format() -> dict[str, Any]:
    """Kong's log serializer as Envoy's ``json_format`` (numbers stay numbers; a missing value is null)."""
    return {
        "request": {
            "method": "%REQ(:METHOD)%",
            "uri": f"%FILTER_STATE({URI_STATE}:PLAIN)%",
            "url": f"%REQ(:SCHEME)%://%REQ(:AUTHORITY)%%FILTER_STATE({URI_STATE}:PLAIN)%",
            "size": "%BYTES_RECEIVED%",
            "headers": {h: f"%REQ({h})%" for h in REQUEST_HEADERS},
        },
        "upstream_uri": "%REQ(:PATH)%",
        "response": {
            "status": "%RESPONSE_CODE%",
            "size": "%BYTES_SENT%",
            "headers": {h: f"%RESP({h})%" for h in RESPONSE_HEADERS},
        },
        "latencies": {
            "request": "%DURATION%",
            "kong": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:ms)%",
            "proxy": "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%",
            "receive": 0,
        },
        "route": {"id": _meta("route_id"), "name": _meta("route_name")},
        "service": {"id": _meta("service_id"), "name": _meta("service_name")},
        "consumer": {
            "id": "%REQ(x-consumer-id)%",
            "username": "%REQ(x-consumer-username)%",
            "custom_id": "%REQ(x-consumer-custom-id)%",
        },
        "workspace_name": _meta("workspace"),
        "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "upstream_status": "%RESPONSE_CODE%",
        "source": "%RESPONSE_CODE_DETAILS%",
        "started_at": "%START_TIME(%s%3f)%",
    }


def source(details: str | None) -> str:
    """Kong's response source from Envoy's response code details: the service answered, Kong exited (a plugin
    or route answer), or an error on the way to the service."""
    if details == "via_upstream":
        return "service"
    if not details or details.startswith(("upstream_", "no_healthy_upstream", "cluster_not_found")):
        return "error"
    return "exit"


# -- gRPC access-log entries (the forwarder) -----------------------------------------------------------------------


def grpc_config(log_name: str, cluster: str) -> dict[str, Any]:
    """An ``HttpGrpcAccessLogConfig`` sending entries to the forwarder's cluster: the headers Kong logs and the
    route's Kong identity as custom tags."""
    tags = [
        {
            "tag": field,
            "metadata": {
                "kind": {"route": {}},
                "metadata_key": {"key": METADATA, "path": [{"key": field}]},
            },
        }
        for field in IDENTITY_FIELDS
    ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
        "common_config": {
            "log_name": log_name,
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
            "transport_api_version": "V3",
            "buffer_flush_interval": "0.2s",
            "filter_state_objects_to_log": [URI_STATE],
            "custom_tags": tags,
        },
        "additional_request_headers_to_log": [h for h in REQUEST_HEADERS if h != "host"],
        "additional_response_headers_to_log": list(RESPONSE_HEADERS),
    }


def _millis(duration: Any) -> int | None:
    if duration is None:
        return None
    return int(duration.seconds * 1000 + duration.nanos // 1_000_000)


def serialize(entry: Any) -> dict[str, Any]:
    """Kong's log object (as :func:`json_format`) from an ``envoy.data.accesslog.v3.HTTPAccessLogEntry``."""
    common = entry.common_properties
    request = entry.request
    response = entry.response
    tags = dict(common.custom_tags)
    headers = dict(request.request_headers)
    headers["host"] = request.authority
    scheme = request.scheme or "http"
    path = _state(common.filter_state_objects.get(URI_STATE)) or request.original_path or request.path
    start = common.start_time.seconds * 1000 + common.start_time.nanos // 1_000_000
    total = _millis(common.duration) if common.HasField("duration") else None
    first_up = _millis(common.time_to_first_upstream_tx_byte) if common.HasField("time_to_first_upstream_tx_byte") else None  # fmt: skip
    last_up = _millis(common.time_to_last_upstream_rx_byte) if common.HasField("time_to_last_upstream_rx_byte") else None  # fmt: skip
    status = response.response_code.value if response.HasField("response_code") else None

    def tag(field: str) -> str | None:
        value = tags.get(field)
        return value if value not in (None, "", "-") else None

    return {
        "request": {
            "method": _method(request.request_method),
            "uri": path,
            "url": f"{scheme}://{request.authority}{path}",
            "size": request.request_body_bytes,
            "headers": {h: headers.get(h) for h in REQUEST_HEADERS},
        },
        "upstream_uri": request.path,
        "response": {
            "status": status,
            "size": response.response_body_bytes,
            "headers": {h: dict(response.response_headers).get(h) for h in RESPONSE_HEADERS},
        },
        "latencies": {
            "request": total,
            "kong": first_up,
            "proxy": (last_up - first_up) if last_up is not None and first_up is not None else None,
            "receive": 0,
        },
        "route": {"id": tag("route_id"), "name": tag("route_name")},
        "service": {"id": tag("service_id"), "name": tag("service_name")},
        "consumer": {
            "id": headers.get("x-consumer-id"),
            "username": headers.get("x-consumer-username"),
            "custom_id": headers.get("x-consumer-custom-id"),
        },
        "workspace_name": tag("workspace"),
        "client_ip": common.downstream_remote_address.socket_address.address or None,
        "upstream_status": status,
        "source": response.response_code_details or None,
        "started_at": start,
    }


def _state(value: Any) -> str | None:
    """A string filter state object as the gRPC access log carries it (``google.protobuf.StringValue``)."""
    if value is None:
        return None
    from google.protobuf import wrappers_pb2

    text = wrappers_pb2.StringValue()
    return text.value if value.Unpack(text) else None


def _method(value: int) -> str:
    from envoy.config.core.v3 import base_pb2

    name = str(base_pb2.RequestMethod.Name(value))
    return name if name != "METHOD_UNSPECIFIED" else ""
