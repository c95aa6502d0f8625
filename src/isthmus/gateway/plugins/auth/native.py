"""key-auth without Lua when the key is good: the common case (one key name, looked for in a header first) as an
Envoy matcher, with kong.auth's Lua only for the requests it cannot settle.

Each of :data:`SLOTS` HTTP filters ``kong.key.<n>`` (``ExtensionWithMatcher`` + ``composite``, by ECDS, disabled
by default) serves one *shape* of key-auth configuration, ``(key name, hide_credentials)``: an exact-match map
from every key-auth credential's key to a ``header_mutation`` that sets Kong's consumer headers (and removes the
key header under ``hide_credentials``). A request whose header holds no known key -- no header, a duplicate
header, an unknown or expiring key, a key in the query or the body, anonymous access -- is handed, by the map's
``on_no_match``, to the kong.auth Lua filter (the same ECDS resource), which answers exactly as it does on its
own routes (Kong's 401s and bodies, ``anonymous``); the Lua reads the route's key-auth configuration under the
slot's name.

A shape's slot is a hash of the shape, so routes and extension configurations agree without knowing each other;
a slot that two shapes of a workspace share holds no keys (both go through the Lua), and so does every slot of a
workspace with consumer-scoped plugin configurations (the Lua clears the route cache for the consumer's route
copy; a header mutation cannot). Routes stay on the kong.auth Lua filter when key-auth shares them with jwt,
basic-auth or acl (which read what kong.auth records), or when ``run_on_preflight`` is off or ``key_in_body`` on.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.common.matching.v3 import extension_matcher_pb2  # noqa: F401
from envoy.extensions.filters.http.composite.v3 import composite_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401

from isthmus.gateway.plugins import EnvoyRoute, auth

SLOTS = 4
PREFIX = "kong.key."
MATCHER_TYPE = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
_T = "type.googleapis.com/envoy.extensions.filters.http."
_COMPOSITE = {"name": "composite", "typed_config": {"@type": _T + "composite.v3.Composite"}}
_ACTION = _T + "composite.v3.ExecuteFilterAction"
_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_MUTATION = _T + "header_mutation.v3.HeaderMutation"
# the other plugins that read what kong.auth records, or run in the same Lua step
_LUA_ONLY = ("jwt", "basic-auth")

Shape = tuple[str, bool]  # (key name, lower case; hide_credentials)


def slot_name(slot: int) -> str:
    return f"{PREFIX}{slot}"


def slot_of(shape: Shape) -> int:
    return zlib.crc32(f"{shape[0]}\n{int(shape[1])}".encode()) % SLOTS


def shape_of(conf: Mapping[str, Any]) -> Shape | None:
    """The shape of a key-auth configuration (``Config.model_dump()``), None when only the Lua can run it."""
    names: Sequence[Any] = conf.get("key_names") or ()
    if len(names) != 1 or not conf.get("key_in_header", True) or conf.get("key_in_body"):
        return None
    if conf.get("run_on_preflight") is False:
        return None
    return (str(names[0]).lower(), bool(conf.get("hide_credentials")))


def http_filters() -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "name": slot_name(n),
            "disabled": True,
            "config_discovery": {
                "config_source": {"ads": {}, "resource_api_version": "V3"},
                "type_urls": [MATCHER_TYPE],
            },
        }
        for n in range(SLOTS)
    )


def native_routes(routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    """``routes`` with key-auth moved from the kong.auth Lua filter to its shape's slot where it can run there."""
    return [_native(r) for r in routes]


def _native(route: EnvoyRoute) -> EnvoyRoute:
    per_filter = route.get("typed_per_filter_config") or {}
    metadata = route.get("metadata") or {}
    filter_metadata = metadata.get("filter_metadata") or {}
    confs = filter_metadata.get(auth.AUTH) or {}
    if auth.AUTH not in per_filter or set(confs) != {"key-auth"} or auth.ACL in per_filter:
        return route
    shape = shape_of(confs["key-auth"])
    if shape is None:
        return route
    slot = slot_name(slot_of(shape))
    kept = {k: v for k, v in filter_metadata.items() if k != auth.AUTH}
    per_filter = {k: v for k, v in per_filter.items() if k != auth.AUTH}
    return {
        **route,
        # the Lua, run by the slot for the requests the map does not settle, reads its configuration there
        "metadata": {**metadata, "filter_metadata": {**kept, slot: confs}},
        "typed_per_filter_config": {**per_filter, slot: auth.ENABLED},
    }


def _lua_action() -> dict[str, Any]:
    return {
        "action": {
            "name": "kong.auth",
            "typed_config": {
                "@type": _ACTION,
                "dynamic_config": {
                    "name": auth.AUTH,
                    "config_discovery": {
                        "config_source": {"ads": {}, "resource_api_version": "V3"},
                        "type_urls": [auth.LUA_TYPE],
                    },
                },
            },
        }
    }


def _set(name: str, value: str) -> dict[str, Any]:
    # a header mutation's value is a format string: a stored '%' is literal, never an Envoy command
    literal = value.replace("%", "%%")
    return {
        "append": {"header": {"key": name, "value": literal}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    }


def _header_safe(*values: Any) -> bool:
    """Whether each value can be a header value as it is (no control characters); the headers of other
    consumers are set by the Lua, so a value Envoy would refuse never costs the workspace its map."""
    return all(all(c == "\t" or (ord(c) >= 0x20 and ord(c) != 0x7F) for c in str(v)) for v in values if v)


def _consumer_action(
    shape: Shape, consumer_id: str, consumer: Mapping[str, Any], credential_id: str
) -> dict[str, Any]:
    mutations: list[dict[str, Any]] = [{"remove": shape[0]}] if shape[1] else []
    mutations.append(_set("x-consumer-id", consumer_id))
    if consumer.get("custom_id"):
        mutations.append(_set("x-consumer-custom-id", str(consumer["custom_id"])))
    if consumer.get("username"):
        mutations.append(_set("x-consumer-username", str(consumer["username"])))
    mutations.append(_set("x-credential-identifier", credential_id))
    return {
        "action": {
            "name": "consumer",
            "typed_config": {
                "@type": _ACTION,
                "typed_config": {
                    "name": "kong.consumer",
                    "typed_config": {"@type": _MUTATION, "mutations": {"request_mutations": mutations}},
                },
            },
        }
    }


def _usable_key(key: str) -> bool:
    """A key the map can hold: Envoy joins repeated headers with ',' (Kong's duplicate), trims values, and ''
    is no key (Kong's ``No API key found``)."""
    return bool(key) and "," not in key and key == key.strip() and all(0x20 <= ord(c) != 0x7F for c in key)


def _keys(entities: Mapping[str, Mapping[str, Mapping[str, Any]]], shape: Shape) -> dict[str, Any]:
    consumers = entities.get("consumers", {})
    out: dict[str, Any] = {}
    for cred in sorted(entities.get("key-auths", {}).values(), key=lambda c: str(c["key"])):
        consumer_id = auth.ref_id(cred.get("consumer"))
        key = str(cred["key"])
        ttl = cred.get("ttl")
        if (
            consumer_id is None
            or consumer_id not in consumers
            or not _usable_key(key)
            or (isinstance(ttl, int) and ttl > 0)
            or not _header_safe(
                consumers[consumer_id].get("username"), consumers[consumer_id].get("custom_id")
            )
        ):
            continue  # the Lua settles it (an expiring credential is checked there)
        out[key] = _consumer_action(shape, consumer_id, consumers[consumer_id], str(cred["id"]))
    return out


def _shapes(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[int, set[Shape]]:
    from isthmus.gateway.plugins.auth.key_auth import Config

    found: dict[int, set[Shape]] = {}
    for plugin in auth.enabled_plugins(entities, "key-auth"):
        shape = shape_of(Config.model_validate(plugin.get("config") or {}).model_dump())
        if shape is not None:
            found.setdefault(slot_of(shape), set()).add(shape)
    return found


def _matcher(shape: Shape | None, keys: Mapping[str, Any]) -> dict[str, Any]:
    fallback = _lua_action()
    if shape is None or not keys:
        # no key to look up: every request goes to the Lua (a map needs an entry; no header value holds a newline)
        shape, keys = ("x-isthmus-no-key", False), {"\n": fallback}
    return {
        "@type": MATCHER_TYPE,
        "extension_config": _COMPOSITE,
        "xds_matcher": {
            "matcher_tree": {
                "input": {"name": "key", "typed_config": {"@type": _HEADER_INPUT, "header_name": shape[0]}},
                "exact_match_map": {"map": dict(keys)},
            },
            "on_no_match": fallback,
        },
    }


_COLLECTIONS = ("consumers", "key-auths", "plugins")
# the last slot configurations built, by the entity objects they were built from (entities are replaced, never
# changed, on write); the objects are held, so their identities are never reused
_MEMO: list[tuple[tuple[object, ...], list[dict[str, Any]]]] = []
_MEMO_SIZE = 4


def extension_configs(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The slots' ECDS resources (``TypedExtensionConfig`` dicts) for a workspace's consumers and credentials."""
    from isthmus.gateway.plugins.auth import consumers as consumer_data

    key = tuple(e for c in _COLLECTIONS for e in entities.get(c, {}).values())
    for seen, built in _MEMO:
        if len(seen) == len(key) and all(a is b for a, b in zip(seen, key, strict=True)):
            return built
    shapes = _shapes(entities)
    scoped = consumer_data.consumer_scoped(entities)
    out: list[dict[str, Any]] = []
    for n in range(SLOTS):
        held: Sequence[Shape] = sorted(shapes.get(n, ()))
        shape = held[0] if len(held) == 1 and not scoped else None
        keys = _keys(entities, shape) if shape is not None else {}
        out.append({"name": slot_name(n), "typed_config": _matcher(shape, keys)})
    _MEMO.insert(0, (key, out))
    del _MEMO[_MEMO_SIZE:]
    return out
