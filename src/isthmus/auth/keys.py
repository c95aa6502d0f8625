"""Token signing keys, kept in the store as internal records (never served by the REST API).

A key is an RSA private key (PEM) in a record named ``<prefix>-<serial>``, as Kuma names them:

* data-plane tokens: ``Secret`` ``dataplane-token-signing-key-<mesh>-<serial>`` in the mesh, so a mesh's keys
  go with the mesh when it is deleted;
* user tokens: ``GlobalSecret`` ``user-token-signing-key-<serial>``.

New tokens are signed with the key of the highest serial, and the JWT header ``kid`` names that serial; a token
is verified with the key its ``kid`` names, so tokens signed by an older key stay valid until that key is
deleted. The first key of a set is created on first use (serial 1), race-safe: when two writers race, the
loser reads the winner's key. Because keys live in the store, tokens survive restarts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from isthmus.store.base import AlreadyExists, Conflict, NotFound, Op, OpKind, ResourceStore

SECRET = "Secret"
GLOBAL_SECRET = "GlobalSecret"
KEY_BITS = 2048
_MAX_SERIAL = 1_000_000_000


class SigningKeyError(Exception):
    """A signing-key operation the caller asked for cannot be done (unknown key, deleting the latest)."""


@dataclass(frozen=True)
class KeySet:
    """Where one family of signing keys lives: record type, mesh (``""`` for global) and name prefix."""

    type: str
    mesh: str
    prefix: str

    def name(self, serial: int) -> str:
        return f"{self.prefix}-{serial}"

    def serial_of(self, name: str) -> int | None:
        """The serial of a record name of this set, None for any other name."""
        head, sep, tail = name.rpartition("-")
        if not sep or head != self.prefix or not tail.isdigit() or tail.startswith("0"):
            return None
        serial = int(tail)
        return serial if 0 < serial <= _MAX_SERIAL else None

    def describe(self) -> str:
        where = f" in mesh {self.mesh!r}" if self.mesh else ""
        return f"{self.type} {self.prefix}-<serial>{where}"


def dataplane_keys(mesh: str) -> KeySet:
    return KeySet(SECRET, mesh, f"dataplane-token-signing-key-{mesh}")


USER_KEYS = KeySet(GLOBAL_SECRET, "", "user-token-signing-key")


def _new_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _load(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError("a stored signing key is not an RSA key")
    return key


class SigningKeys:
    """Reads, creates, rotates and deletes signing keys in the store. Parsed keys are cached by content."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._parsed: dict[tuple[str, str, str], tuple[str, rsa.RSAPrivateKey, rsa.RSAPublicKey]] = {}

    def _parse(self, keyset: KeySet, name: str, pem: str) -> tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey]:
        cache_key = (keyset.type, keyset.mesh, name)
        cached = self._parsed.get(cache_key)
        if cached is not None and cached[0] == pem:
            return cached[1], cached[2]
        key = _load(pem)
        if len(self._parsed) > 4096:
            self._parsed.clear()
        self._parsed[cache_key] = (pem, key, key.public_key())
        return key, self._parsed[cache_key][2]

    async def serials(self, keyset: KeySet) -> list[int]:
        """The serials of the keys of ``keyset`` that exist, ascending."""
        page = await self.store.list(keyset.type, keyset.mesh)
        found = (keyset.serial_of(r.name) for r in page.items if r.mesh == keyset.mesh)
        return sorted(s for s in found if s is not None)

    async def _pair(self, keyset: KeySet, serial: int) -> tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey] | None:
        name = keyset.name(serial)
        record = await self.store.get(keyset.type, keyset.mesh, name)
        if record is None:
            return None
        pem = (record.spec.get("data") or {}).get("key")
        if not isinstance(pem, str):
            return None
        return self._parse(keyset, name, pem)

    async def private_key(self, keyset: KeySet, serial: int) -> rsa.RSAPrivateKey | None:
        pair = await self._pair(keyset, serial)
        return pair[0] if pair is not None else None

    async def public_key(self, keyset: KeySet, serial: int) -> rsa.RSAPublicKey | None:
        """The public half of the key (the same object while the stored key is unchanged)."""
        pair = await self._pair(keyset, serial)
        return pair[1] if pair is not None else None

    async def latest(self, keyset: KeySet) -> tuple[int, rsa.RSAPrivateKey]:
        """The key of the highest serial, created (serial 1) if the set is empty."""
        for _ in range(5):
            serials = await self.serials(keyset)
            if not serials:
                await self._create(keyset, 1)
                continue
            key = await self.private_key(keyset, serials[-1])
            if key is not None:
                return serials[-1], key
        raise SigningKeyError(f"could not read or create a signing key ({keyset.describe()})")

    async def rotate(self, keyset: KeySet) -> int:
        """Create a key with a serial one above the highest; new tokens are signed with it. Returns it."""
        for _ in range(5):
            serials = await self.serials(keyset)
            serial = (serials[-1] + 1) if serials else 1
            if await self._create(keyset, serial):
                return serial
        raise SigningKeyError(
            f"could not create a new signing key ({keyset.describe()}): concurrent rotations"
        )

    async def delete(self, keyset: KeySet, serial: int) -> None:
        """Delete an older key: every token it signed stops being valid. The latest key cannot be deleted
        (rotate first), so that the next token is never signed by a key created behind the user's back."""
        serials = await self.serials(keyset)
        if serial not in serials:
            raise SigningKeyError(f"there is no signing key with serial {serial} ({keyset.describe()})")
        if serial == serials[-1]:
            raise SigningKeyError(
                f"signing key {serial} is the latest one and signs new tokens; rotate the key first"
            )
        try:
            await self.store.write([Op(OpKind.DELETE, keyset.type, keyset.mesh, keyset.name(serial))])
        except NotFound:
            pass  # deleted concurrently: the outcome is the same
        self._parsed.pop((keyset.type, keyset.mesh, keyset.name(serial)), None)

    async def _create(self, keyset: KeySet, serial: int) -> bool:
        """Store a new key of ``serial``; False when another writer created that serial first."""
        pem = await asyncio.to_thread(_new_key_pem)
        op = Op(OpKind.CREATE, keyset.type, keyset.mesh, keyset.name(serial), spec={"data": {"key": pem}})
        try:
            await self.store.write([op])
        except (AlreadyExists, Conflict):
            return False
        return True
