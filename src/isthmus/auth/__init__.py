"""Identity and access: data-plane and user tokens (RS256 JWTs, as Kuma's), their signing keys in the store,
and the settings the REST API and the ADS server use to authenticate callers."""

from __future__ import annotations

from dataclasses import dataclass

from isthmus.auth.tokens import TokenService

DP_AUTH_MODES = ("token", "none")


@dataclass(frozen=True)
class Auth:
    """How a control plane authenticates callers.

    ``dp_auth``: ``token`` (a data plane must present a data-plane token on the REST API and on its ADS stream)
    or ``none`` (trusted set-ups: data-plane endpoints are open). ``localhost_is_admin``: a REST request from a
    loopback address without a token acts as an admin.
    """

    tokens: TokenService
    dp_auth: str = "token"
    localhost_is_admin: bool = True

    def __post_init__(self) -> None:
        if self.dp_auth not in DP_AUTH_MODES:
            raise ValueError(f"dp_auth must be one of {', '.join(DP_AUTH_MODES)}, not {self.dp_auth!r}")


__all__ = ["DP_AUTH_MODES", "Auth", "TokenService"]
