"""Zone tokens: what a zone control plane presents to the global one (Kuma's ``zoneToken``).

An RS256 JWT like the data-plane tokens, with the claims ``Zone`` (the zone's name) and ``Scope`` (what it may
be used for: ``cp`` a zone control plane, ``ingress``/``egress`` its zone proxies; Kuma's default is all three),
plus ``exp``, ``iat``, ``nbf``, ``jti`` and the header ``kid``. It is signed by the global's own key set
(``GlobalSecret`` ``zone-token-signing-key-<serial>``) and revoked by listing its id in the ``GlobalSecret``
``zone-token-revocations``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from isthmus.auth.keys import GLOBAL_SECRET, KeySet
from isthmus.auth.tokens import (
    ALGORITHM,
    MAX_VALIDITY,
    InvalidToken,
    TokenService,
    _expiry,
    _ids_of,
    _registered_claims,
    unverified_claims,
)
from isthmus.store.base import AlreadyExists, Conflict, Op, OpKind

ZONE_KEYS = KeySet(GLOBAL_SECRET, "", "zone-token-signing-key")
ZONE_REVOCATIONS = "zone-token-revocations"
ZONE_SCOPES = ("cp", "ingress", "egress")
DEFAULT_ZONE_VALIDITY = MAX_VALIDITY


@dataclass(frozen=True)
class ZoneIdentity:
    zone: str
    scopes: tuple[str, ...]
    token_id: str
    expires_at: datetime

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def is_zone_token(token: str) -> bool:
    try:
        return "Zone" in unverified_claims(token)
    except InvalidToken:
        return False


async def issue_zone_token(
    tokens: TokenService,
    *,
    zone: str,
    scopes: Iterable[str] = ZONE_SCOPES,
    valid_for: timedelta = DEFAULT_ZONE_VALIDITY,
    now: datetime | None = None,
) -> str:
    claims = {"Zone": zone, "Scope": list(dict.fromkeys(scopes)), **_registered_claims(valid_for, now)}
    serial, key = await tokens.keys.latest(ZONE_KEYS)
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": str(serial)})


async def verify_zone_token(tokens: TokenService, token: str) -> ZoneIdentity:
    """The zone a token was issued for; InvalidToken when it is not a valid, unrevoked zone token."""
    token = token.strip()
    if "Zone" not in unverified_claims(token):
        raise InvalidToken("this is not a zone token (it has no Zone claim)")
    claims = await tokens._decode(token, ZONE_KEYS)
    zone, scopes = claims.get("Zone"), claims.get("Scope", list(ZONE_SCOPES))
    if not isinstance(zone, str) or not zone:
        raise InvalidToken("the token's Zone claim must be a non-empty string")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidToken("the token's Scope claim must be a list of strings")
    if claims["jti"] in await revoked_zone_tokens(tokens):
        raise InvalidToken("the token has been revoked")
    return ZoneIdentity(zone, tuple(scopes), claims["jti"], _expiry(claims))


async def revoked_zone_tokens(tokens: TokenService) -> set[str]:
    return _ids_of(await tokens.store.get(GLOBAL_SECRET, "", ZONE_REVOCATIONS))


async def revoke_zone_token(tokens: TokenService, token_id: str) -> None:
    """Add ``token_id`` to the zone tokens' revocation list (idempotent; concurrent revocations all land)."""
    for _ in range(10):
        record = await tokens.store.get(GLOBAL_SECRET, "", ZONE_REVOCATIONS)
        ids = _ids_of(record)
        if token_id in ids:
            return
        op = Op(
            OpKind.UPSERT,
            GLOBAL_SECRET,
            "",
            ZONE_REVOCATIONS,
            spec={"data": {"value": ",".join(sorted(ids | {token_id}))}},
            expected_version=record.version if record is not None else 0,
        )
        try:
            await tokens.store.write([op])
            return
        except (Conflict, AlreadyExists):
            continue
    raise Conflict(GLOBAL_SECRET, "", ZONE_REVOCATIONS, 0, 0)
