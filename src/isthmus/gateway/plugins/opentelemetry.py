"""opentelemetry: spans of the gateway's requests exported as OTLP/HTTP (protobuf) to ``traces_endpoint`` by
Envoy's OpenTelemetry tracer, W3C trace context propagated to the upstream.

``headers`` go with each export, ``resource_attributes`` are the spans' resource (Envoy's static resource
detector; ``service.name`` names the service, else Kong's ``kong``), ``sampling_rate`` is each route's random
sampling (unset: Kong's ``tracing_sampling_rate`` default, 0.01): a request is sampled at that rate whatever its
parent's flag, as Kong's default ``sampling_strategy`` does for a sampled parent (a parent's "not sampled" is not
honoured; ``parent_probability_fallback`` is not supported yet); ``http_response_header_for_traceid`` answers the
trace id. Propagation is W3C only (``traceparent``):
``header_type`` ``preserve``/``w3c`` and ``propagation`` with ``w3c``/``preserve`` are accepted, other formats are
not supported yet, nor ``logs_endpoint``, ``access_logs`` and ``metrics.endpoint``. Accepted as is: ``queue``
and the deprecated batch fields (Envoy batches spans itself), ``connect_timeout`` (the collector cluster's), ``send_timeout`` + ``read_timeout`` (each
export's timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401
from envoy.extensions.tracers.opentelemetry.resource_detectors.v3 import (  # noqa: F401
    static_config_resource_detector_pb2,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, tracing
from isthmus.gateway.plugins.http_log import Queue, url
from isthmus.gateway.plugins.zipkin import HeaderType, propagation_errors

NAME = "opentelemetry"
DEFAULT_SAMPLING_RATE = 0.01  # kong.conf's tracing_sampling_rate
_Timeout = Annotated[int, Field(ge=0, le=2**31 - 2)]


class Propagation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extract: list[Literal["aws", "b3", "datadog", "gcp", "instana", "jaeger", "ot", "w3c"]] | None = None
    inject: list[HeaderType | Literal["preserve"]] | None = None
    clear: list[str] | None = None
    default_format: HeaderType = "w3c"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    traces_endpoint: Annotated[str, AfterValidator(url)] | None = None
    logs_endpoint: str | None = None
    access_logs: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    resource_attributes: dict[str, str] | None = None
    queue: Queue = Field(default_factory=lambda: Queue(max_batch_size=200))
    batch_span_count: int | None = None
    batch_flush_delay: int | None = None
    connect_timeout: _Timeout = 1000
    send_timeout: _Timeout = 5000
    read_timeout: _Timeout = 5000
    http_response_header_for_traceid: str | None = None
    header_type: HeaderType | Literal["preserve", "ignore"] = "preserve"
    sampling_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    sampling_strategy: Literal["parent_drop_probability_fallback", "parent_probability_fallback"] = (
        "parent_drop_probability_fallback"
    )
    propagation: Propagation = Field(default_factory=Propagation)


def checks(config: Config) -> dict[str, str]:
    errors: dict[str, str] = {}
    if config.traces_endpoint is None and config.logs_endpoint is None:
        errors["traces_endpoint"] = "required field missing"
    if config.logs_endpoint is not None:
        errors["logs_endpoint"] = "logs_endpoint is not supported yet"
    if config.access_logs and config.access_logs.get("endpoint"):
        errors["access_logs"] = "access_logs is not supported yet"
    if config.metrics and config.metrics.get("endpoint"):
        errors["metrics"] = "metrics is not supported yet"
    if config.sampling_strategy != "parent_drop_probability_fallback":
        errors["sampling_strategy"] = f"'{config.sampling_strategy}' is not supported yet"
    if config.header_type not in ("preserve", "w3c"):
        errors["header_type"] = f"'{config.header_type}' is not supported yet"
    errors.update(propagation_errors(config.propagation, ("w3c",)))
    return errors


def collector(config: Config) -> dict[str, Any]:
    """The fields the workspace's opentelemetry configurations must share (the HCM's one tracer)."""
    return {
        "traces_endpoint": config.traces_endpoint,
        "headers": config.headers,
        "resource_attributes": config.resource_attributes,
        "connect_timeout": config.connect_timeout,
        "send_timeout": config.send_timeout,
        "read_timeout": config.read_timeout,
    }


def identified_apply(
    config: Config, identity: Mapping[str, str | None], routes: list[EnvoyRoute]
) -> list[EnvoyRoute]:
    rate = DEFAULT_SAMPLING_RATE if config.sampling_rate is None else config.sampling_rate
    tags: list[dict[str, Any]] = []
    for field in ("route_id", "service_id"):
        if identity.get(field):
            tags.append(
                {"tag": f"kong.{field.replace('_id', '')}", "literal": {"value": str(identity[field])}}
            )
    routes = tracing.sampled(routes, rate, "kong", tags, config.http_response_header_for_traceid)
    if config.propagation.clear:
        routes = [{**r, "request_headers_to_remove": [*r.get("request_headers_to_remove", []), *config.propagation.clear]} for r in routes]  # fmt: skip
    return tracing.marked(NAME, config, identity, routes)


def provider(workspace: str, config: Config) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the HCM's ``tracing.provider``, the collector's cluster)."""
    cluster_name = f"kong:{workspace}:opentelemetry"
    attributes = dict(config.resource_attributes or {})
    service_name = attributes.pop("service.name", "kong")
    endpoint = config.traces_endpoint or "http://127.0.0.1/v1/traces"
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "service_name": service_name,
        "http_service": {
            "http_uri": {
                "uri": endpoint,
                "cluster": cluster_name,
                "timeout": f"{max(config.send_timeout + config.read_timeout, 1) / 1000:g}s",
            },
            "request_headers_to_add": [
                {"header": {"key": k, "value": v}} for k, v in sorted((config.headers or {}).items())
            ],
        },
    }
    if attributes:
        typed["resource_detectors"] = [
            {
                "name": "envoy.tracers.opentelemetry.resource_detectors.static_config",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3."
                    "StaticConfigResourceDetectorConfig",
                    "attributes": attributes,
                },
            }
        ]
    cluster = tracing.collector_cluster(cluster_name, endpoint, config.connect_timeout)
    return {"name": "envoy.tracers.opentelemetry", "typed_config": typed}, cluster


KIND = PluginKind(
    name=NAME,
    priority=14,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
)
