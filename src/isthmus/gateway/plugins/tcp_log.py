"""tcp-log: Kong's log serializer as newline-delimited JSON sent over TCP (optionally TLS) to ``host:port``.

Envoy has no raw-TCP line logger (its TCP-speaking fluentd logger sends Fluentd's msgpack forward protocol, which
a Kong user's receiver does not expect), so each distinct configuration is an HCM access log of Envoy's gRPC
access-log service (``envoy.access_loggers.http_grpc``) to the forwarder the gateway agent runs on loopback
(:mod:`isthmus.gateway.log_forwarder`): the log name carries the target, the forwarder writes Kong's JSON lines to
it, off the request path. ``timeout`` bounds connecting and each write, ``keepalive`` is how long an idle
connection is kept, ``tls`` / ``tls_sni`` as Kong (the peer's certificate is not verified, as Kong's
``sslhandshake(..., false)``). ``custom_fields_by_lua`` is not supported yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, kong_log

NAME = "tcp-log"
FORWARDER_CLUSTER = "kong:log-forwarder"


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("value should be between 0 and 65535")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, AfterValidator(_port)]
    timeout: float = 10000
    keepalive: float = 60000
    tls: bool = False
    tls_sni: str | None = None
    custom_fields_by_lua: dict[str, str] | None = None


def checks(config: Config) -> dict[str, str]:
    if config.custom_fields_by_lua:
        return {"custom_fields_by_lua": "custom_fields_by_lua is not supported yet"}
    return {}


def identified_apply(
    config: Config, identity: Mapping[str, str | None], routes: list[EnvoyRoute]
) -> list[EnvoyRoute]:
    return kong_log.mark(routes, NAME, kong_log.key(NAME, config), identity)


def log_name(name: str, config: BaseModel) -> str:
    """The gRPC log name: the plugin and its configuration, which the forwarder reads to know where to send."""
    return json.dumps(
        {"plugin": name, "config": config.model_dump(mode="json")}, sort_keys=True, separators=(",", ":")
    )


def grpc_access_log(name: str, config: BaseModel) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.http_grpc",
        "filter": kong_log.route_filter(name, kong_log.key(name, config)),
        "typed_config": kong_log.grpc_config(log_name(name, config), FORWARDER_CLUSTER),
    }


def access_log(config: Config) -> dict[str, Any]:
    return grpc_access_log(NAME, config)


KIND = PluginKind(
    name=NAME,
    priority=7,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
)
