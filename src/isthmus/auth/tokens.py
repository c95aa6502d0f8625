"""Data-plane tokens and user tokens: RS256 JWTs with Kuma's claims.

* A data-plane token (Kuma's ``dpToken``) carries ``Name`` (may be empty: any name), ``Mesh``, ``Tags``
  (``{key: [allowed values]}``, may be empty) and ``Type`` (``dataplane``). It is signed by a key of its mesh.
* A user token carries ``Name`` and ``Groups``; it is signed by the global user-token key.

Both carry ``exp``, ``iat``, ``nbf`` (five minutes before issue, for clock skew) and ``jti`` (a random id), and
the header ``kid`` (the serial of the signing key, see :mod:`isthmus.auth.keys`). A token is revoked by listing
its ``jti`` in a revocation record, as Kuma does: ``Secret`` ``dataplane-token-revocations-<mesh>`` in the mesh,
``GlobalSecret`` ``user-token-revocations``; the record's ``data.value`` is the comma-separated ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from isthmus.auth.keys import GLOBAL_SECRET, SECRET, USER_KEYS, KeySet, SigningKeys, dataplane_keys
from isthmus.resources.common import NAME_RE
from isthmus.store.base import AlreadyExists, Conflict, Op, OpKind, Record, ResourceStore

ADMIN_GROUP = "mesh-system:admin"
READONLY_GROUP = "mesh-system:readonly"
DATAPLANE_TYPE = "dataplane"
INGRESS_TYPE = "ingress"  # a zone ingress (isthmus.ingress): its ZoneIngress only, any mesh's key signs it
EGRESS_TYPE = "egress"  # a zone egress (isthmus.egress): its ZoneEgress only, any mesh's key signs it
MAX_VALIDITY = timedelta(days=3650)
DEFAULT_DATAPLANE_VALIDITY = MAX_VALIDITY  # Kuma's default when a data-plane token request has no validFor
CLOCK_SKEW = timedelta(minutes=5)
MAX_TOKEN_LENGTH = 16 * 1024
ALGORITHM = "RS256"
MAX_VERIFIED = 10_000  # tokens whose verified claims are remembered
USER_REVOCATIONS = "user-token-revocations"
ADMIN_TOKEN_SECRET = "admin-user-token"  # Kuma's bootstrap admin token
ADMIN_USER = "mesh-system:admin"


def dataplane_revocations_name(mesh: str) -> str:
    return f"dataplane-token-revocations-{mesh}"


class InvalidToken(Exception):
    """The token is malformed, not signed by a known key, expired or revoked (HTTP 401, gRPC UNAUTHENTICATED)."""


class Forbidden(Exception):
    """The token is valid but does not allow this (HTTP 403, gRPC PERMISSION_DENIED)."""


@dataclass(frozen=True)
class DataplaneIdentity:
    mesh: str
    name: str  # "" when the token is valid for any name (with its tags)
    tags: Mapping[str, frozenset[str]]
    type: str
    token_id: str
    expires_at: datetime

    def refusal(self, mesh: str, name: str, dataplane_tags: Mapping[str, Collection[str]]) -> str | None:
        """Why a Dataplane ``mesh``/``name`` with these tags may not use this token; None when it may.

        For each tag of the token, the Dataplane must have that tag and every value it has must be one the
        token allows (Kuma's rule)."""
        if mesh != self.mesh:
            return f"the token is for mesh {self.mesh!r}, not {mesh!r}"
        if self.name and name != self.name:
            return f"the token is for the Dataplane {self.name!r}, not {name!r}"
        for key in sorted(self.tags):
            allowed = self.tags[key]
            values = dataplane_tags.get(key)
            if not values:
                return f"the Dataplane has no tag {key!r}, which the token requires"
            extra = sorted(set(values) - allowed)
            if extra:
                return (
                    f"the token does not allow the value {extra[0]!r} of tag {key!r} "
                    f"(allowed: {', '.join(sorted(allowed))})"
                )
        return None


@dataclass(frozen=True)
class UserIdentity:
    name: str
    groups: tuple[str, ...]
    token_id: str
    expires_at: datetime

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups


def dataplane_tags(spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """Every tag value of a Dataplane, from its JSON form (stored spec or request body): the tags of its
    inbounds and of its gateway section. Malformed parts are skipped (validation reports them)."""
    out: dict[str, set[str]] = {}
    networking = spec.get("networking")
    if not isinstance(networking, Mapping):
        return out
    tag_maps: list[Any] = []
    inbound = networking.get("inbound")
    if isinstance(inbound, list):
        tag_maps.extend(i.get("tags") for i in inbound if isinstance(i, Mapping))
    gateway = networking.get("gateway")
    if isinstance(gateway, Mapping):
        tag_maps.append(gateway.get("tags"))
    for tags in tag_maps:
        if not isinstance(tags, Mapping):
            continue
        for key, value in tags.items():
            if isinstance(key, str):
                out.setdefault(key, set()).add(str(value))
    return out


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _registered_claims(valid_for: timedelta, now: datetime | None) -> dict[str, Any]:
    issued = _now(now)
    return {
        "jti": str(uuid.uuid4()),
        "iat": int(issued.timestamp()),
        "nbf": int((issued - CLOCK_SKEW).timestamp()),
        "exp": int((issued + valid_for).timestamp()),
    }


_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]*")


def _segment(segment: str, what: str) -> Any:
    """A base64url JSON segment of a JWT, decoded (PyJWT checks every character in Python, three times per
    token when header, claims and signature are read apart: a regular expression does it once)."""
    if not _SEGMENT_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken(f"the token is not a valid JWT: its {what} is not base64url")
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError) as exc:
        raise InvalidToken(f"the token is not a valid JWT: its {what} is not JSON ({exc})") from None


def _unverified(token: str) -> tuple[Any, Any]:
    """The header and the claims of a token, checking nothing but their form."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("the token is not a valid JWT: it must have three segments")
    return _segment(parts[0], "header"), _segment(parts[1], "payload")


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token without checking anything (to route it to the right keys, or to revoke it)."""
    claims = _unverified(token)[1]
    if not isinstance(claims, dict):
        raise InvalidToken("the token's claims are not an object")
    return claims


def is_dataplane_token(claims: Mapping[str, Any]) -> bool:
    return "Mesh" in claims


def _serial(token: str) -> int:
    header = _unverified(token)[0]
    if not isinstance(header, dict):
        raise InvalidToken("the token is not a valid JWT: its header is not an object")
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"the token must be signed with {ALGORITHM}, not {header.get('alg')!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid.isdigit() or len(kid) > 10:
        raise InvalidToken("the token's header has no valid kid (the serial of its signing key)")
    return int(kid)


def _ids_of(record: Record | None) -> set[str]:
    if record is None:
        return set()
    value = (record.spec.get("data") or {}).get("value", "")
    return {v.strip() for v in str(value).split(",") if v.strip()}


def _text_list(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _expiry(claims: Mapping[str, Any]) -> datetime:
    """The ``exp`` claim as a time; InvalidToken unless it is a whole number of seconds in datetime's range (a
    validly signed token from another tool may carry anything there)."""
    exp = claims.get("exp")
    if type(exp) is not int:
        raise InvalidToken("the token's exp claim must be a whole number of seconds")
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, ValueError, OSError):
        raise InvalidToken("the token's exp claim is out of range") from None


class TokenService:
    """Issues, verifies and revokes tokens, and rotates their signing keys. Everything lives in the store."""

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = SigningKeys(store)
        self.clock = clock
        # sha256(token) -> (the public key that verified it, its claims): a token presented again (its REST
        # registration, then its ADS stream; reconnects) is not decoded and its signature not checked again,
        # as long as the same key (same serial, same stored key) still verifies it. Expiry, nbf and revocation
        # are checked on every use.
        self._verified: dict[bytes, tuple[rsa.RSAPublicKey, dict[str, Any]]] = {}
        self._revocations: dict[tuple[str, str, str], tuple[str, frozenset[str]]] = {}

    @staticmethod
    def keyset(mesh: str | None) -> KeySet:
        """The data-plane keys of ``mesh``, or the user-token keys when ``mesh`` is None."""
        return USER_KEYS if mesh is None else dataplane_keys(mesh)

    # -- issuing -------------------------------------------------------------------------------------------------
    async def _sign(self, keyset: KeySet, claims: dict[str, Any]) -> str:
        serial, key = await self.keys.latest(keyset)
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": str(serial)})

    async def issue_dataplane_token(
        self,
        *,
        mesh: str,
        name: str = "",
        tags: Mapping[str, Iterable[str]] | None = None,
        type: str = DATAPLANE_TYPE,
        valid_for: timedelta = DEFAULT_DATAPLANE_VALIDITY,
        now: datetime | None = None,
    ) -> str:
        claims = {
            "Name": name,
            "Mesh": mesh,
            "Tags": {k: sorted(set(v)) for k, v in sorted((tags or {}).items())},
            "Type": type,
            **_registered_claims(valid_for, now),
        }
        return await self._sign(dataplane_keys(mesh), claims)

    async def issue_user_token(
        self, *, name: str, groups: Iterable[str], valid_for: timedelta, now: datetime | None = None
    ) -> str:
        claims = {"Name": name, "Groups": list(dict.fromkeys(groups)), **_registered_claims(valid_for, now)}
        return await self._sign(USER_KEYS, claims)

    # -- verifying -----------------------------------------------------------------------------------------------
    async def verify(self, token: str) -> DataplaneIdentity | UserIdentity:
        """A data-plane or a user token, whichever ``token`` is."""
        if is_dataplane_token(unverified_claims(token)):
            return await self.verify_dataplane_token(token)
        return await self.verify_user_token(token)

    async def _decode(self, token: str, keyset: KeySet) -> dict[str, Any]:
        serial = _serial(token)
        public = await self.keys.public_key(keyset, serial)
        if public is None:
            raise InvalidToken(
                f"there is no signing key with serial {serial} ({keyset.describe()}); "
                "if the key was rotated and deleted, generate a new token"
            )
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None and hit[0] is public:
            claims = hit[1]
            now = self.clock()
            if claims["exp"] <= now:
                raise InvalidToken("the token has expired")
            nbf = claims.get("nbf")
            if isinstance(nbf, int | float) and nbf > now:
                raise InvalidToken("the token is not valid yet")
            return dict(claims)
        claims = self._verify(token, public)
        if type(claims.get("exp")) is int:  # PyJWT checked it is a number; only whole seconds are remembered
            if len(self._verified) >= MAX_VERIFIED:
                now = self.clock()
                self._verified = {k: v for k, v in self._verified.items() if v[1]["exp"] > now}
                if len(self._verified) >= MAX_VERIFIED:
                    self._verified.clear()
            self._verified[digest] = (public, dict(claims))
        return claims

    @staticmethod
    def _verify(token: str, public: rsa.RSAPublicKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, public, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "jti"]}
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not match its signing key") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise InvalidToken("the token has no id (jti)")
        return claims

    async def verify_dataplane_token(self, token: str) -> DataplaneIdentity:
        unverified = unverified_claims(token)
        mesh = unverified.get("Mesh")
        if not is_dataplane_token(unverified):
            raise InvalidToken("this is not a data-plane token")
        if not isinstance(mesh, str) or not NAME_RE.match(mesh):
            raise InvalidToken("the token's Mesh claim is not a mesh name")
        claims = await self._decode(token, dataplane_keys(mesh))
        name, kind, raw_tags = claims.get("Name", ""), claims.get("Type", DATAPLANE_TYPE), claims.get("Tags")
        tags: dict[str, frozenset[str]] = {}
        if raw_tags is not None:
            if not isinstance(raw_tags, dict):
                raise InvalidToken("the token's Tags claim is not a map")
            for key, values in raw_tags.items():
                listed = _text_list(values)
                if listed is None:
                    raise InvalidToken(f"the token's tag {key!r} is not a list of values")
                tags[key] = frozenset(listed)
        if not isinstance(name, str) or not isinstance(kind, str):
            raise InvalidToken("the token's Name and Type claims must be strings")
        if kind not in ("", DATAPLANE_TYPE, INGRESS_TYPE, EGRESS_TYPE):
            raise InvalidToken(f"the token is for proxies of type {kind!r}, not {DATAPLANE_TYPE!r}")
        if await self.is_revoked(claims["jti"], mesh):
            raise InvalidToken("the token has been revoked")
        return DataplaneIdentity(
            mesh=mesh,
            name=name,
            tags=tags,
            type=kind or DATAPLANE_TYPE,
            token_id=claims["jti"],
            expires_at=_expiry(claims),
        )

    async def verify_user_token(self, token: str) -> UserIdentity:
        if is_dataplane_token(unverified_claims(token)):
            raise InvalidToken("this is a data-plane token, not a user token")
        claims = await self._decode(token, USER_KEYS)
        name, groups = claims.get("Name"), _text_list(claims.get("Groups", []))
        if not isinstance(name, str) or not name or groups is None:
            raise InvalidToken("the token's Name must be a non-empty string and Groups a list of strings")
        if await self.is_revoked(claims["jti"], None):
            raise InvalidToken("the token has been revoked")
        return UserIdentity(
            name=name,
            groups=groups,
            token_id=claims["jti"],
            expires_at=_expiry(claims),
        )

    # -- revocation ----------------------------------------------------------------------------------------------
    @staticmethod
    def _revocations_key(mesh: str | None) -> tuple[str, str, str]:
        if mesh is None:
            return GLOBAL_SECRET, "", USER_REVOCATIONS
        return SECRET, mesh, dataplane_revocations_name(mesh)

    async def revoked_ids(self, mesh: str | None) -> set[str]:
        """The revoked token ids of ``mesh``'s data-plane tokens, or of user tokens when ``mesh`` is None."""
        return _ids_of(await self.store.get(*self._revocations_key(mesh)))

    async def is_revoked(self, token_id: str, mesh: str | None) -> bool:
        key = self._revocations_key(mesh)
        record = await self.store.get(*key)
        if record is None:
            return False
        value = str((record.spec.get("data") or {}).get("value", ""))
        memo = self._revocations.get(key)
        if memo is None or memo[0] != value:  # the list parsed once per content, not once per check
            memo = self._revocations[key] = (value, frozenset(_ids_of(record)))
        return token_id in memo[1]

    async def revoke(self, token_id: str, mesh: str | None) -> None:
        """Add ``token_id`` to the revocation list (idempotent; concurrent revocations all land)."""
        type_, record_mesh, name = self._revocations_key(mesh)
        for _ in range(10):
            record = await self.store.get(type_, record_mesh, name)
            ids = _ids_of(record)
            if token_id in ids:
                return
            value = ",".join(sorted(ids | {token_id}))
            op = Op(
                OpKind.UPSERT,
                type_,
                record_mesh,
                name,
                spec={"data": {"value": value}},
                expected_version=record.version if record is not None else 0,
            )
            try:
                await self.store.write([op])
                return
            except (Conflict, AlreadyExists):
                continue
        raise Conflict(type_, record_mesh, name, 0, 0)

    async def bootstrap_admin_token(self) -> str:
        """An admin user token kept in the ``GlobalSecret`` ``admin-user-token`` (Kuma's bootstrap admin token),
        issued the first time and again whenever the stored one is no longer valid (revoked, key deleted)."""
        for _ in range(5):
            record = await self.store.get(GLOBAL_SECRET, "", ADMIN_TOKEN_SECRET)
            if record is not None:
                stored = str((record.spec.get("data") or {}).get("value", ""))
                try:
                    await self.verify_user_token(stored)
                    return stored
                except InvalidToken:
                    pass
            token = await self.issue_user_token(name=ADMIN_USER, groups=[ADMIN_GROUP], valid_for=MAX_VALIDITY)
            op = Op(
                OpKind.UPSERT,
                GLOBAL_SECRET,
                "",
                ADMIN_TOKEN_SECRET,
                spec={"data": {"value": token}},
                expected_version=record.version if record is not None else 0,
            )
            try:
                await self.store.write([op])
                return token
            except (Conflict, AlreadyExists):
                continue
        raise Conflict(GLOBAL_SECRET, "", ADMIN_TOKEN_SECRET, 0, 0)

    # -- signing keys --------------------------------------------------------------------------------------------
    async def rotate_signing_key(self, mesh: str | None) -> int:
        return await self.keys.rotate(self.keyset(mesh))

    async def signing_key_serials(self, mesh: str | None) -> list[int]:
        return await self.keys.serials(self.keyset(mesh))

    async def delete_signing_key(self, mesh: str | None, serial: int) -> None:
        await self.keys.delete(self.keyset(mesh), serial)
