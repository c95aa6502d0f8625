"""file-log: Kong's log serializer as one JSON line per request appended to ``path``, by Envoy's file access logger.

One access log on the gateway's HCM per distinct configuration, selecting the routes the configuration applies to
(:mod:`isthmus.gateway.plugins.kong_log`); the JSON is :func:`kong_log.json_format`. ``reopen`` is accepted: Envoy
reopens its access log files on ``SIGUSR1`` / the admin ``/reopen_logs`` (log rotation) rather than per request.
``custom_fields_by_lua`` is not supported yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, kong_log

NAME = "file-log"
_PATH = re.compile(r"^[^*&%\\`]+$")


def _path(value: str) -> str:
    if not _PATH.match(value):
        raise ValueError("not a valid filename")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, AfterValidator(_path)]
    reopen: bool = False
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
    """The HCM access log of one configuration."""
    return {
        "name": "envoy.access_loggers.file",
        "filter": kong_log.route_filter(NAME, kong_log.key(NAME, config)),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": config.path,
            "log_format": {"json_format": kong_log.json_format()},
        },
    }


KIND = PluginKind(
    name=NAME,
    priority=9,
    config=Config,
    apply=lambda c, r: r,
    identified_apply=identified_apply,
    checks=checks,
    # the client's path, for every logging and tracing plugin (kong_log.mark enables it on their routes)
    http_filters=(kong_log.URI_HTTP_FILTER,),
)
