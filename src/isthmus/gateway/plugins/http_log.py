"""http-log: Kong's log serializer sent by HTTP to ``http_endpoint``, batched per Kong's ``queue``.

Envoy has no HTTP POST logger: each distinct configuration is an HCM access log of Envoy's gRPC access-log service
to the forwarder the gateway agent runs on loopback (:mod:`isthmus.gateway.log_forwarder`), which queues the
entries as Kong's queue does (``max_batch_size``, ``max_coalescing_delay``, ``max_entries``, ``max_bytes``,
retries with ``initial_retry_delay`` doubling up to ``max_retry_delay`` for ``max_retry_time``) and sends a batch
of one as a JSON object, a larger one as a JSON array, with ``method``, ``content_type``, ``headers`` (and the
endpoint's userinfo as Basic authorization), ``timeout`` per request and ``keepalive`` for idle connections; off
the request path. ``custom_fields_by_lua`` is not supported yet; the deprecated ``retry_count``, ``queue_size``
and ``flush_timeout`` are accepted and, as in Kong 3, superseded by ``queue``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, kong_log, tcp_log

NAME = "http-log"


def url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("missing host in url" if parts.scheme in ("http", "https") else "unsupported scheme")
    return value


class Queue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    max_coalescing_delay: Annotated[float, Field(ge=0, le=3600)] = 1
    max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 10000
    max_bytes: int | None = None
    max_retry_time: float = 60
    initial_retry_delay: Annotated[float, Field(ge=0.001, le=1_000_000)] = 0.01
    max_retry_delay: Annotated[float, Field(ge=0.001, le=1_000_000)] = 60
    concurrency_limit: Literal[-1, 1] = 1


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http_endpoint: Annotated[str, AfterValidator(url)]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["application/json", "application/json; charset=utf-8"] = "application/json"
    timeout: float = 10000
    keepalive: float = 60000
    retry_count: int | None = None
    queue_size: int | None = None
    flush_timeout: float | None = None
    headers: dict[str, str] | None = None
    queue: Queue = Field(default_factory=Queue)
    ssl_verify: bool | None = None
    custom_fields_by_lua: dict[str, str] | None = None


def checks(config: Config) -> dict[str, str]:
    if config.custom_fields_by_lua:
        return {"custom_fields_by_lua": "custom_fields_by_lua is not supported yet"}
    return {}


def identified_apply(
    config: Config, identity: Mapping[str, str | None], routes: list[EnvoyRoute]
) -> list[EnvoyRoute]:
    return kong_log.mark(routes, NAME, kong_log.key(NAME, config), identity)


def access_log(config: Config) -> dict[str, Any]:
    return tcp_log.grpc_access_log(NAME, config)


KIND = PluginKind(
    name=NAME,
    priority=12,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
)
