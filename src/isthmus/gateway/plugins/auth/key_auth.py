"""key-auth (PRIORITY 1250): an API key in a header, a query argument or the body (form or JSON) names a
key-auth credential; Kong's 401s (``No API key found in request``, ``Duplicate API key found``,
``Unauthorized``) with ``WWW-Authenticate: Key[ realm="..."]``. Runs in the kong.auth Lua filter
(:mod:`isthmus.gateway.plugins.auth`); a credential's ``ttl`` expires it. Not supported: keys in a
``multipart/form-data`` body (such a body has no key for Isthmus)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, auth

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


def _header_names(values: list[str]) -> list[str]:
    for value in values:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'")
    return values


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_names: Annotated[list[str], AfterValidator(_header_names)] = ["apikey"]
    hide_credentials: bool = False
    anonymous: str | None = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    realm: str | None = None


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    return auth.with_metadata(routes, auth.AUTH, "key-auth", config.model_dump())


KIND = PluginKind(name="key-auth", priority=1250, config=Config, apply=apply, no_consumer=True)
