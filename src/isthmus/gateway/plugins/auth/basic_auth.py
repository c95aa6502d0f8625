"""basic-auth (PRIORITY 1100): ``Proxy-Authorization`` then ``Authorization: Basic`` against basic-auth
credentials, verified as Kong does: the stored hash is ``sha1(password .. consumer_id)`` in hex (computed in Lua,
so hashes dumped from Kong keep working); Kong's 401 ``Unauthorized`` with ``WWW-Authenticate: Basic
realm="<realm>"``. Runs in the kong.auth Lua filter (:mod:`isthmus.gateway.plugins.auth`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, auth


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anonymous: str | None = None
    hide_credentials: bool = False
    realm: str = "service"


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    return auth.with_metadata(routes, auth.AUTH, "basic-auth", config.model_dump())


KIND = PluginKind(name="basic-auth", priority=1100, config=Config, apply=apply, no_consumer=True)
