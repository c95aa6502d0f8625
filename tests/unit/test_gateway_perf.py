"""The gateway's hot-path and change-path properties bench.gateway relies on (no timing): a plain route runs no
Lua and no disabled filter, the consumer headers go before routing, and a route change among many routes changes
only the RouteConfiguration (the listeners, clusters and ECDS resources keep their bytes, hence their versions)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from isthmus.gateway import route_index
from isthmus.gateway.plugins import auth
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.xds import types

SVC = "6f1d0b1e-0000-4000-8000-000000000001"
LISTEN = (ListenAddress("127.0.0.1", 8000),)


def _entities(routes: int, consumers: int) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {
        "services": {SVC: {"id": SVC, "host": "127.0.0.1", "port": 9000, "protocol": "http"}},
        "routes": {},
        "consumers": {},
        "key-auths": {},
        "plugins": {},
    }
    for i in range(routes):
        rid = f"00000000-0000-4000-8000-{i:012d}"
        out["routes"][rid] = {"id": rid, "name": f"r{i}", "paths": [f"/s{i:05d}"], "service": {"id": SVC}}
    for i in range(consumers):
        cid = f"00000000-0000-4000-9000-{i:012d}"
        out["consumers"][cid] = {"id": cid, "username": f"user-{i}"}
        out["key-auths"][f"k{i}"] = {"id": f"k{i}", "key": f"key-{i}", "consumer": {"id": cid}}
    first = next(iter(out["routes"]))
    out["plugins"]["p"] = {
        "id": "p",
        "name": "key-auth",
        "route": {"id": first},
        "config": {},
        "enabled": True,
    }
    return out


def _hcm(resources: dict[str, list[Any]]) -> dict[str, Any]:
    listener = json_format.MessageToDict(
        resources[types.LISTENER][0].packed, preserving_proto_field_name=True
    )
    filters = listener["filter_chains"][0]["filters"]
    return dict(filters[0]["typed_config"])


def test_consumer_headers_go_before_routing_and_plugin_filters_are_off_by_default() -> None:
    hcm = _hcm(translate("ws", _entities(3, 1), LISTEN))
    early = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {m["remove"] for m in early} == set(auth.FORGEABLE_HEADERS)
    assert "x-consumer-id" in auth.FORGEABLE_HEADERS and auth.JWT_HEADER in auth.FORGEABLE_HEADERS
    # every plugin filter is disabled unless a route enables it: a plain route runs only the router
    on = [f["name"] for f in hcm["http_filters"] if not f.get("disabled")]
    assert on == ["envoy.filters.http.router"]


def test_a_route_change_changes_only_the_route_configuration() -> None:
    before = _entities(300, 200)
    after = {c: dict(items) for c, items in before.items()}
    rid = sorted(after["routes"])[150]
    after["routes"][rid] = {**after["routes"][rid], "paths": ["/changed"]}  # entities are replaced on write
    old, new = translate("ws", before, LISTEN), translate("ws", after, LISTEN)
    for type_url in (types.LISTENER, types.CLUSTER, auth.EXTENSION_CONFIG):
        assert [r.digest for r in old[type_url]] == [r.digest for r in new[type_url]], type_url
    assert [r.digest for r in old[types.ROUTE]] != [r.digest for r in new[types.ROUTE]]


def test_the_index_route_lists_are_the_routes_serialised() -> None:
    from envoy.config.route.v3 import route_components_pb2, route_pb2

    resources = translate("ws", _entities(100, 0), LISTEN)
    config = route_pb2.RouteConfiguration()
    resources[types.ROUTE][0].packed.Unpack(config)
    vhost = config.virtual_hosts[0]
    assert not vhost.routes and vhost.matcher.HasField("matcher_tree")
    for key, on_match in vhost.matcher.matcher_tree.prefix_match_map.map.items():
        listed = route_components_pb2.RouteList()
        assert on_match.action.typed_config.Unpack(listed)
        assert listed.routes[-1].name == "no route"  # the catch-all ends every list
        if key != "/":
            assert listed.routes[0].match.prefix == key
    assert route_index._varint(300) == b"\xac\x02" and route_index._varint(5) == b"\x05"
