"""zipkin: spans of the gateway's requests sent to a Zipkin collector by Envoy's Zipkin tracer, B3 (and W3C)
propagated to the upstream so that a trace continues into the mesh's services.

The HCM's tracer is ``envoy.tracers.zipkin`` (JSON v2 spans POSTed to ``http_endpoint`` through a cluster of its
own); ``sample_ratio`` is each route's random sampling (a request that carries a sampling decision keeps it);
``static_tags``, ``tags_header`` (the header's value as one tag named after it; Kong splits ``k=v;k2=v2`` into
tags) and the authenticated consumer (``include_credential``) are span tags; ``http_span_name`` names the span
(``GET`` or ``GET /path``); ``http_response_header_for_traceid`` answers the trace id.

Propagation: Envoy reads B3 (multi and single header) and, with W3C, ``traceparent``; it sends B3 headers, and
``traceparent`` too when W3C is asked for (``header_type: w3c``, ``default_header_type: w3c``, or ``w3c`` in
``propagation.inject``/``default_format``). ``traceid_byte_count`` is the trace id's length. Not supported yet:
the jaeger, ot, aws, datadog, gcp, instana, b3-single and ignore header types, an empty ``propagation.extract`` or
``inject``, a ``local_service_name`` other than Kong's default (the spans name the gateway's Dataplane service).
Accepted as is: ``queue``, ``phase_duration_flavor``, ``default_service_name`` (Envoy batches and names spans
itself), ``connect_timeout`` (the collector cluster's), ``send_timeout``/``read_timeout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, tracing
from isthmus.gateway.plugins.http_log import Queue, url

NAME = "zipkin"
HeaderType = Literal["aws", "b3", "b3-single", "datadog", "gcp", "instana", "jaeger", "ot", "w3c"]
_SUPPORTED = ("b3", "w3c")


class StaticTag(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    value: str


class Propagation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extract: list[Literal["aws", "b3", "datadog", "gcp", "instana", "jaeger", "ot", "w3c"]] | None = None
    inject: list[HeaderType | Literal["preserve"]] | None = None
    clear: list[str] | None = None
    default_format: HeaderType = "b3"


_Timeout = Annotated[int, Field(ge=0, le=2**31 - 2)]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    local_service_name: str = "kong"
    http_endpoint: Annotated[str, AfterValidator(url)] | None = None
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 0.001
    default_service_name: str | None = None
    include_credential: bool = True
    traceid_byte_count: Literal[8, 16] = 16
    header_type: HeaderType | Literal["preserve", "ignore"] = "preserve"
    default_header_type: HeaderType = "b3"
    tags_header: str = "Zipkin-Tags"
    static_tags: list[StaticTag] | None = None
    http_span_name: Literal["method", "method_path"] = "method"
    connect_timeout: _Timeout = 2000
    send_timeout: _Timeout = 5000
    read_timeout: _Timeout = 5000
    http_response_header_for_traceid: str | None = None
    phase_duration_flavor: Literal["annotations", "tags"] = "annotations"
    queue: Queue = Field(default_factory=Queue)
    propagation: Propagation = Field(default_factory=Propagation)


def checks(config: Config) -> dict[str, str]:
    errors: dict[str, str] = {}
    if config.header_type not in ("preserve", *_SUPPORTED):
        errors["header_type"] = f"'{config.header_type}' is not supported yet"
    if config.default_header_type not in _SUPPORTED:
        errors["default_header_type"] = f"'{config.default_header_type}' is not supported yet"
    if config.local_service_name != "kong":
        errors["local_service_name"] = "a value other than 'kong' is not supported yet"
    errors.update(propagation_errors(config.propagation, _SUPPORTED))
    return errors


def propagation_errors(p: Any, supported: tuple[str, ...]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for field in ("extract", "inject"):
        values = getattr(p, field)
        if values is None:
            continue
        if not values:
            errors[f"propagation.{field}"] = f"an empty {field} is not supported yet"
        for value in values:
            if value not in (*supported, "preserve"):
                errors[f"propagation.{field}"] = f"'{value}' is not supported yet"
    if p.default_format not in supported:
        errors["propagation.default_format"] = f"'{p.default_format}' is not supported yet"
    return errors


def w3c(config: Config) -> bool:
    p = config.propagation
    return (
        config.header_type == "w3c"
        or (config.header_type == "preserve" and config.default_header_type == "w3c")
        or "w3c" in (p.inject or ())
        or (p.inject is not None and "preserve" in p.inject and p.default_format == "w3c")
    )


def collector(config: Config) -> dict[str, Any]:
    """The fields the workspace's zipkin configurations must share (the HCM's one tracer)."""
    return {
        "http_endpoint": config.http_endpoint,
        "traceid_byte_count": config.traceid_byte_count,
        "local_service_name": config.local_service_name,
        "connect_timeout": config.connect_timeout,
        "w3c": w3c(config),
    }


def identified_apply(
    config: Config, identity: Mapping[str, str | None], routes: list[EnvoyRoute]
) -> list[EnvoyRoute]:
    tags: list[dict[str, Any]] = [
        {"tag": t.name, "literal": {"value": t.value}} for t in config.static_tags or ()
    ]
    if config.tags_header:
        tags.append({"tag": config.tags_header.lower(), "request_header": {"name": config.tags_header}})
    if config.include_credential:
        tags.append({"tag": "kong.consumer", "request_header": {"name": "x-consumer-id"}})
    for field in ("route_id", "service_id"):
        if identity.get(field):
            tags.append(
                {"tag": f"kong.{field.replace('_id', '')}", "literal": {"value": str(identity[field])}}
            )
    operation = "%REQ(:METHOD)%" + (" %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" if config.http_span_name == "method_path" else "")  # fmt: skip
    routes = tracing.sampled(
        routes, config.sample_ratio, operation, tags, config.http_response_header_for_traceid
    )
    if config.propagation.clear:
        routes = [{**r, "request_headers_to_remove": [*r.get("request_headers_to_remove", []), *config.propagation.clear]} for r in routes]  # fmt: skip
    return tracing.marked(NAME, config, identity, routes)


def provider(workspace: str, config: Config) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the HCM's ``tracing.provider``, the collector's cluster or None without ``http_endpoint``)."""
    cluster_name = f"kong:{workspace}:zipkin"
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": cluster_name,
        "collector_endpoint": tracing.path_of(config.http_endpoint or "/api/v2/spans"),
        "collector_endpoint_version": "HTTP_JSON",
        "trace_id_128bit": config.traceid_byte_count == 16,
        "shared_span_context": False,
        "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION" if w3c(config) else "USE_B3",
    }
    if config.http_endpoint:
        from urllib.parse import urlsplit

        typed["collector_hostname"] = urlsplit(config.http_endpoint).netloc.rpartition("@")[2]
    cluster = (
        tracing.collector_cluster(cluster_name, config.http_endpoint, config.connect_timeout)
        if config.http_endpoint
        else None
    )
    return {"name": "envoy.tracers.zipkin", "typed_config": typed}, cluster


KIND = PluginKind(
    name=NAME,
    priority=100000,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
)
