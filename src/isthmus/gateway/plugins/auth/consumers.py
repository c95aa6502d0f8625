"""The workspace's consumers and credentials as one Lua table ``D``, prepended to kong.auth's source.

``D.consumers[id] = true``, ``D.names[id] = username``, ``D.custom[id] = custom_id``, ``D.groups[id] = {acl
groups}`` (only for consumers with groups), ``D.usernames[username] = id`` (``anonymous`` may name a consumer by id or
username), ``D.keys[key] = consumer id``, ``D.key_ids[key] = credential id``, ``D.key_exp[key] = expiry`` (key-auth;
only with a ``ttl``): flat maps of strings rather than a table per consumer and per key (20,000 fewer tables
for the Lua collector to walk at 10,000 consumers);
``D.basics[username] = {u, c, h}`` (basic-auth; ``h`` is Kong's stored ``sha1(password .. consumer_id)``),
``D.jwts[key] = {id, c, key, alg, b64}`` (jwt; ``b64``: the secret decodes as base64 for ``secret_is_base64``),
``D.consumer_routes``: whether consumer-scoped plugin configurations exist (then kong.auth re-selects routes).

The table is filled by functions of at most :data:`CHUNK` entries each (LuaJIT limits the constants of one
function), so 10,000 consumers compile in one source.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any

from isthmus.gateway.plugins import auth

CHUNK = 2000
_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but '"' and '\\'


def lua_str(value: str) -> str:
    """A Lua string literal of ``value``'s UTF-8 bytes (printable ASCII kept, every other byte escaped)."""
    if _PLAIN.fullmatch(value):  # the common case, without a loop over the bytes (10,000 consumers)
        return '"' + value + '"'
    out = ['"']
    for byte in value.encode():
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def _lua(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"[{lua_str(str(k))}]={_lua(v)}" for k, v in value.items() if v is not None) + "}"
        )
    return lua_str(str(value))


def b64_secret(secret: str) -> bytes | None:
    """Kong's ``secret_is_base64`` decoding (base64url, padding optional), None when it is not base64."""
    text = secret.rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


def _statements(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterator[str]:
    groups: dict[str, list[str]] = {}
    for acl in sorted(
        entities.get("acls", {}).values(), key=lambda a: (a.get("created_at") or 0, str(a["group"]))
    ):
        consumer = auth.ref_id(acl.get("consumer"))
        if consumer:
            groups.setdefault(consumer, []).append(str(acl["group"]))
    for cid, c in sorted(entities.get("consumers", {}).items()):
        key = lua_str(cid)
        yield f"C[{key}]=true"
        if c.get("username"):
            yield f"N[{key}]={lua_str(str(c['username']))}"
            yield f"U[{lua_str(str(c['username']))}]={key}"
        if c.get("custom_id"):
            yield f"X[{key}]={lua_str(str(c['custom_id']))}"
        if groups.get(cid):
            yield f"G[{key}]={_lua(groups[cid])}"
    for cred in entities.get("key-auths", {}).values():
        consumer = auth.ref_id(cred.get("consumer"))
        ttl = cred.get("ttl")
        key = lua_str(str(cred["key"]))
        yield f"K[{key}]={_lua(consumer)}"
        yield f"KI[{key}]={_lua(cred['id'])}"
        if isinstance(ttl, int) and ttl > 0:
            yield f"KE[{key}]={int(cred.get('created_at') or 0) + int(ttl)}"
    for cred in entities.get("basic-auths", {}).values():
        consumer = auth.ref_id(cred.get("consumer"))
        record = {"u": cred["username"], "c": consumer, "h": cred["password"]}
        yield f"B[{lua_str(str(cred['username']))}]={_lua(record)}"
    for cred in entities.get("jwts", {}).values():
        consumer = auth.ref_id(cred.get("consumer"))
        algorithm = str(cred.get("algorithm") or "HS256")
        record = {
            "id": cred["id"],
            "c": consumer,
            "key": cred["key"],
            "alg": algorithm,
            "b64": b64_secret(str(cred.get("secret") or "")) is not None,
        }
        yield f"J[{lua_str(str(cred['key']))}]={_lua(record)}"


def consumer_scoped(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> bool:
    from isthmus.gateway import plugins

    return any(
        p.get("consumer") and p.get("enabled", True) and p.get("name") in plugins.kinds()
        for p in entities.get("plugins", {}).values()
    )


def data_source(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    lines = [
        "local D = {consumers = {}, names = {}, custom = {}, groups = {}, usernames = {}, keys = {}, key_ids = {}, "
        "key_exp = {}, basics = {}, jwts = {}, "
        f"consumer_routes = {_lua(consumer_scoped(entities))}}}"
    ]
    chunk: list[str] = []

    def flush() -> None:
        if chunk:
            lines.append(
                # the ";" ends the previous statement: a line starting with "(" would call the previous chunk's result
                ";(function() local C, N, X, G, U = D.consumers, D.names, D.custom, D.groups, D.usernames\n"
                "local K, KI, KE, B, J = D.keys, D.key_ids, D.key_exp, D.basics, D.jwts\n"
                + "\n".join(chunk)
                + "\nend)()"
            )
            chunk.clear()

    for statement in _statements(entities):
        chunk.append(statement)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    return "\n".join(lines) + "\n"


_COLLECTIONS = ("consumers", "key-auths", "basic-auths", "jwts", "acls")
# the last sources built, by the entity objects they were built from (entities are replaced, never changed, on
# write: the same objects mean the same table); the objects are held, so their identities are never reused
_MEMO: list[tuple[tuple[object, ...], str]] = []
_MEMO_SIZE = 4


def lua_source(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """kong.auth's whole Lua source: the helpers, ``D``, then the plugins."""
    key = (consumer_scoped(entities), *(e for c in _COLLECTIONS for e in entities.get(c, {}).values()))
    for seen, source in _MEMO:
        if len(seen) == len(key) and all(a is b for a, b in zip(seen, key, strict=True)):
            return source
    source = auth.lua("codec", "request", "sha1") + "\n" + data_source(entities) + auth.lua("auth")
    _MEMO.insert(0, (key, source))
    del _MEMO[_MEMO_SIZE:]
    return source
