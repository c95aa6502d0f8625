"""key-auth's native path (isthmus.gateway.plugins.auth.native): which routes take it, what the slots hold."""

from __future__ import annotations

import itertools
import json
from typing import Any

from isthmus.gateway import plugins
from isthmus.gateway.envoy_routes import route_configuration
from isthmus.gateway.plugins.auth import native

Entities = dict[str, dict[str, dict[str, Any]]]


def _plugin(
    pid: str, name: str, route: str | None = None, consumer: str | None = None, **config: Any
) -> dict[str, Any]:
    return {
        "id": pid,
        "name": name,
        "enabled": True,
        "config": config,
        "route": {"id": route} if route else None,
        "service": None,
        "consumer": {"id": consumer} if consumer else None,
    }


def _workspace(**extra_plugins: Any) -> Entities:
    consumers: dict[str, dict[str, Any]] = {
        "c1": {"id": "c1", "username": "alice", "custom_id": "a-1"},
        "c2": {"id": "c2", "username": "bob", "custom_id": None},
    }
    keys = {
        "k1": {"id": "k1", "consumer": {"id": "c1"}, "key": "alice-key", "created_at": 1},
        "k2": {"id": "k2", "consumer": {"id": "c2"}, "key": "bob-key", "created_at": 1},
        "k3": {"id": "k3", "consumer": {"id": "c2"}, "key": "expiring", "created_at": 1, "ttl": 60},
        "k4": {"id": "k4", "consumer": {"id": "c2"}, "key": "a,b", "created_at": 1},
        "k5": {"id": "k5", "consumer": {"id": "gone"}, "key": "orphan", "created_at": 1},
    }
    services = {"s": {"id": "s", "host": "127.0.0.1", "port": 80, "protocol": "http"}}
    routes = {
        name: {"id": name, "paths": [f"/{name}"], "service": {"id": "s"}, "protocols": ["http", "https"]}
        for name in ("plain", "keyed", "acl", "two", "body")
    }
    found: dict[str, dict[str, Any]] = {
        "p1": _plugin("p1", "key-auth", route="keyed"),
        "p2": _plugin("p2", "key-auth", route="acl"),
        "p3": _plugin("p3", "acl", route="acl", allow=["admins"]),
        "p4": _plugin("p4", "key-auth", route="two", key_names=["apikey", "token"]),
        "p5": _plugin("p5", "key-auth", route="body", key_in_body=True),
        **extra_plugins,
    }
    return {
        "consumers": consumers,
        "key-auths": keys,
        "services": services,
        "routes": routes,
        "plugins": found,
    }


def _routes(entities: Entities) -> dict[str, dict[str, Any]]:
    config = route_configuration("default", entities)
    out = {}
    for r in config["virtual_hosts"][0]["routes"]:
        for name in entities["routes"]:
            if f"/{name}" in json.dumps(r["match"]) and name not in out:
                out[name] = r
    return out


def _slot(name: str = "apikey", hide: bool = False) -> str:
    return native.slot_name(native.slot_of((name, hide)))


def test_shapes() -> None:
    default = {"key_names": ["ApiKey"], "key_in_header": True, "key_in_body": False, "run_on_preflight": True}
    assert native.shape_of(default) == ("apikey", False)
    assert native.shape_of({**default, "hide_credentials": True}) == ("apikey", True)
    assert native.shape_of({**default, "key_in_query": False}) == ("apikey", False)
    assert native.shape_of({**default, "key_names": ["a", "b"]}) is None
    assert native.shape_of({**default, "key_in_header": False}) is None
    assert native.shape_of({**default, "key_in_body": True}) is None
    assert native.shape_of({**default, "run_on_preflight": False}) is None


def test_only_key_auth_alone_in_one_header_moves_to_its_slot() -> None:
    routes = _routes(_workspace())
    keyed = routes["keyed"]
    slot = _slot()
    assert slot in keyed["typed_per_filter_config"] and "kong.auth" not in keyed["typed_per_filter_config"]
    # the Lua, when the slot hands a request to it, finds its configuration under the slot's name
    assert keyed["metadata"]["filter_metadata"][slot]["key-auth"]["key_names"] == ["apikey"]
    assert "kong.auth" not in keyed["metadata"]["filter_metadata"]
    for name in ("acl", "two", "body"):
        per_filter = routes[name]["typed_per_filter_config"]
        assert "kong.auth" in per_filter and not any(k.startswith(native.PREFIX) for k in per_filter), name
    assert not any(k.startswith(native.PREFIX) for k in routes["plain"].get("typed_per_filter_config", {}))


def _slots(entities: Entities) -> dict[str, dict[str, Any]]:
    return {c["name"]: c["typed_config"] for c in native.extension_configs(entities)}


def _keys(matcher: dict[str, Any]) -> dict[str, Any]:
    tree = matcher["xds_matcher"]["matcher_tree"]
    assert (
        matcher["xds_matcher"]["on_no_match"]["action"]["typed_config"]["dynamic_config"]["name"]
        == "kong.auth"
    )
    return {k: v for k, v in tree["exact_match_map"]["map"].items() if k != "\n"}


def _headers(action: dict[str, Any]) -> dict[str, str]:
    mutation = action["action"]["typed_config"]["typed_config"]["typed_config"]["mutations"][
        "request_mutations"
    ]
    return {m["append"]["header"]["key"]: m["append"]["header"]["value"] for m in mutation if "append" in m}


def test_a_slot_maps_each_usable_key_to_kongs_consumer_headers() -> None:
    slots = _slots(_workspace())
    assert sorted(slots) == [native.slot_name(n) for n in range(native.SLOTS)]
    used = slots[_slot()]
    tree = used["xds_matcher"]["matcher_tree"]
    assert tree["input"]["typed_config"]["header_name"] == "apikey"
    keys = _keys(used)
    # expiring keys, keys Envoy would join with a duplicate's, keys of missing consumers: settled by the Lua
    assert sorted(keys) == ["alice-key", "bob-key"]
    assert _headers(keys["alice-key"]) == {
        "x-consumer-id": "c1",
        "x-consumer-custom-id": "a-1",
        "x-consumer-username": "alice",
        "x-credential-identifier": "k1",
    }
    assert "x-consumer-custom-id" not in _headers(keys["bob-key"])
    for name, matcher in slots.items():
        if name != _slot():
            assert _keys(matcher) == {}, name


def test_hide_credentials_removes_the_key_header() -> None:
    entities = _workspace(p1=_plugin("p1", "key-auth", route="keyed", hide_credentials=True))
    keys = _keys(_slots(entities)[_slot(hide=True)])
    mutations = keys["alice-key"]["action"]["typed_config"]["typed_config"]["typed_config"]["mutations"]
    assert mutations["request_mutations"][0] == {"remove": "apikey"}


def test_slots_left_to_the_lua() -> None:
    # consumer-scoped plugin configurations: the Lua re-selects the consumer's route copy
    scoped = _workspace(p9=_plugin("p9", "request-termination", consumer="c1", status_code=403))
    assert all(_keys(m) == {} for m in _slots(scoped).values())
    # two shapes in one slot: neither is looked up natively
    names = (f"key-{i}" for i in itertools.count())
    first = next(names)
    other = next(n for n in names if native.slot_of((n, False)) == native.slot_of((first, False)))
    shared = _workspace(
        p1=_plugin("p1", "key-auth", route="keyed", key_names=[first]),
        p2=_plugin("p2", "key-auth", route="acl", key_names=[other]),
    )
    assert _keys(_slots(shared)[_slot(first)]) == {}


def test_the_slots_are_rebuilt_only_when_an_entity_changes() -> None:
    entities = _workspace()
    first = native.extension_configs(entities)
    assert native.extension_configs({k: dict(v) for k, v in entities.items()}) is first
    changed = {k: dict(v) for k, v in entities.items()}
    changed["key-auths"]["k1"] = {**changed["key-auths"]["k1"], "key": "rotated"}
    assert "rotated" in json.dumps(native.extension_configs(changed))


def test_the_slots_are_valid_envoy_configuration() -> None:
    from envoy.config.core.v3 import extension_pb2
    from google.protobuf import json_format

    for config in plugins.extension_configs(_workspace()):
        json_format.ParseDict(config, extension_pb2.TypedExtensionConfig())


def test_stored_names_are_literal_header_values() -> None:
    entities = _workspace()
    entities["consumers"]["c1"] = {**entities["consumers"]["c1"], "username": "%REQ(authorization)%"}
    entities["consumers"]["c2"] = {**entities["consumers"]["c2"], "custom_id": "line\nbreak"}
    keys = _keys(_slots(entities)[_slot()])
    # a '%' is escaped (Envoy's format strings), never evaluated as a command
    assert _headers(keys["alice-key"])["x-consumer-username"] == "%%REQ(authorization)%%"
    # a value Envoy refuses in a header: that consumer is left to the Lua, the others keep the map
    assert sorted(keys) == ["alice-key"]
