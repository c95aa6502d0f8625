"""Kong's auth plugins as Envoy configuration (pure parts): scoping with consumers, route copies, config checks,
the credential table and jwt_authn's providers."""

from __future__ import annotations

import json
from typing import Any

from isthmus.gateway import plugins
from isthmus.gateway.envoy_routes import route_configuration
from isthmus.gateway.plugins.auth import consumers, jwt
from isthmus.gateway.plugins.auth.routes import consumer_copies


def _plugin(pid: str, name: str, route: str | None = None, service: str | None = None, consumer: str | None = None, **config: Any) -> dict[str, Any]:  # fmt: skip
    def ref(x: str | None) -> dict[str, str] | None:
        return {"id": x} if x else None

    return {"id": pid, "name": name, "route": ref(route), "service": ref(service), "consumer": ref(consumer), "config": config, "enabled": True}  # fmt: skip


def test_effective_follows_kong_precedence_with_consumers() -> None:
    scopes = plugins.Scopes(
        {
            p["id"]: p
            for p in (
                _plugin("g", "request-termination"),
                _plugin("c", "request-termination", consumer="C"),
                _plugin("rs", "request-termination", route="R", service="S"),
                _plugin("rc", "cors", route="R", consumer="C"),
                _plugin("r", "cors", route="R"),
                _plugin("sc", "correlation-id", service="S", consumer="C"),
                _plugin("rsc", "correlation-id", route="R", service="S", consumer="C"),
            )
        }
    )
    general = scopes.effective("R", "S")
    assert {n: p["id"] for n, p in general.items()} == {"request-termination": "rs", "cors": "r"}
    mine = scopes.effective("R", "S", "C")
    # route+service (4) beats consumer (5); route+consumer (2) beats route (6); route+service+consumer (1) wins
    assert {n: p["id"] for n, p in mine.items()} == {"request-termination": "rs", "cors": "rc", "correlation-id": "rsc"}  # fmt: skip
    assert scopes.effective("other", None, "C")["request-termination"]["id"] == "c"
    assert scopes.consumers("R", "S") == ["C"]
    assert scopes.consumers("other", None) == ["C"]


def test_consumer_copies_only_where_effective_plugins_differ() -> None:
    scopes = plugins.Scopes(
        {
            "a": _plugin("a", "request-termination", consumer="A", status_code=403),
            "b": _plugin("b", "request-termination", route="R", service="S"),
            "x": _plugin("x", "cors", route="other", consumer="B"),
        }
    )

    def build(effective: Any) -> list[dict[str, Any]]:
        return [
            {"name": "r", "match": {"prefix": "/r"}, "plugins": sorted(p["id"] for p in effective.values())}
        ]

    assert consumer_copies(scopes, "R", "S", build) == []  # route+service beats A's consumer-only config
    copies = consumer_copies(scopes, "R2", None, build)
    assert copies == [
        {
            "name": "r consumer A",
            "match": {"prefix": "/r", "headers": [{"name": "x-consumer-id", "string_match": {"exact": "A"}}]},
            "plugins": ["a"],
        }
    ]


def test_config_checks() -> None:
    assert plugins.config_errors("acl", {}) == {
        "config": {
            "@entity": ["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]
        }
    }
    assert "@entity" in plugins.config_errors("acl", {"allow": ["a"], "deny": ["b"]})["config"]
    assert plugins.config_errors("jwt", {"key_claim_name": "kid"}) == {
        "config": {"key_claim_name": "a key_claim_name other than 'iss' is not supported yet"}
    }
    assert "claims_to_verify" in plugins.config_errors("jwt", {"maximum_expiration": 60})["config"]
    assert plugins.config_errors("jwt", {"maximum_expiration": 60, "claims_to_verify": ["exp"]}) == {}
    assert "key_names" in plugins.config_errors("key-auth", {"key_names": ["bad name"]})["config"]
    assert plugins.config_errors("basic-auth", {"realm": "x", "hide_credentials": True}) == {}
    assert plugins.kinds()["key-auth"].no_consumer and plugins.kinds()["acl"].no_consumer


def test_lua_strings_escape_every_byte_that_is_not_printable_ascii() -> None:
    assert consumers.lua_str('a"b\\c\n') == '"a\\034b\\092c\\010"'
    assert consumers.lua_str("é") == '"\\195\\169"'


def _workspace(n: int) -> dict[str, dict[str, dict[str, Any]]]:
    cons = {f"c{i}": {"id": f"c{i}", "username": f"user{i}", "custom_id": None} for i in range(n)}
    keys = {f"k{i}": {"id": f"k{i}", "consumer": {"id": f"c{i}"}, "key": f"key-{i}", "created_at": 1} for i in range(n)}  # fmt: skip
    services = {"s": {"id": "s", "host": "127.0.0.1", "port": 80, "protocol": "http"}}
    routes = {f"r{i}": {"id": f"r{i}", "paths": [f"/r{i}"], "service": {"id": "s"}, "protocols": ["http", "https"]} for i in range(n)}  # fmt: skip
    auth = {"ka": _plugin("ka", "key-auth", service="s", key_names=["apikey"])}
    return {"consumers": cons, "key-auths": keys, "services": services, "routes": routes, "plugins": auth}


def test_ten_thousand_consumers_and_routes_stay_small() -> None:
    ws = _workspace(10_000)
    source = consumers.lua_source(ws)
    assert len(source) < 2_500_000
    # 50,000 entries (consumer, its username both ways, key, key id) in functions of 2,000
    assert source.count("(function()") == 25
    routes = route_configuration("default", ws)["virtual_hosts"][0]["routes"]
    per_route = len(json.dumps(routes)) / len(routes)
    assert per_route < 1500  # each route carries its plugin config only, never the credentials
    assert "key-9999" not in json.dumps(routes)


def test_jwt_providers() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    ec_pem = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    ws: dict[str, dict[str, dict[str, Any]]] = {
        "jwts": {
            "h": {"id": "h", "key": "iss-h", "secret": "c2VjcmV0", "algorithm": "HS256"},
            "r": {"id": "r", "key": "iss-r", "secret": "x", "algorithm": "RS256", "rsa_public_key": rsa_pem},
            "e": {"id": "e", "key": "iss-e", "secret": "x", "algorithm": "ES384", "rsa_public_key": ec_pem},
            "bad": {
                "id": "bad",
                "key": "iss-bad",
                "secret": "x",
                "algorithm": "ES256",
                "rsa_public_key": rsa_pem,
            },
        },
        "plugins": {"j": _plugin("j", "jwt", secret_is_base64=True)},
    }
    config = jwt.authentication(ws)
    providers = config["providers"]
    assert sorted(providers) == [
        "ce",
        "ch",
        "cr",
    ]  # an RSA key cannot verify ES256: no provider, no signature
    assert providers["ch"]["issuer"] == "iss-h" and providers["ch"]["payload_in_metadata"] == "h"
    keys = json.loads(providers["ch"]["local_jwks"]["inline_string"])["keys"]
    assert keys == [
        {"kty": "oct", "alg": "HS256", "k": "c2VjcmV0"}
    ]  # base64 "secret", base64url-encoded again
    assert json.loads(providers["ce"]["local_jwks"]["inline_string"])["keys"][0]["crv"] == "P-384"
    assert config["requirement_map"] == {"kong": {"allow_missing_or_failed": {}}}
    assert (
        providers["cr"]["from_headers"] == [{"name": "x-isthmus-jwt"}] and providers["cr"]["forward"] is True
    )


def test_gateway_resources_carry_credentials_by_ecds_only() -> None:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from google.protobuf import json_format

    from isthmus.gateway.translate import ListenAddress, translate
    from isthmus.xds import types

    ws = _workspace(3)
    out = translate("default", ws, [ListenAddress("127.0.0.1", 8000)])
    ecds = {r.name: r for r in out[plugins.EXTENSION_CONFIG]}
    assert sorted(ecds) == ["kong.auth", "kong.jwt", "kong.key.0", "kong.key.1", "kong.key.2", "kong.key.3"]
    listener_pb = listener_pb2.Listener()
    out[types.LISTENER][0].packed.Unpack(listener_pb)
    listener = json_format.MessageToDict(listener_pb)
    filters = listener["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"]
    names = [f["name"] for f in filters]
    assert (
        names.index("kong.auth.pre")
        < names.index("kong.jwt")
        < names.index("kong.auth")
        < names.index("kong.acl")
    )
    assert "configDiscovery" in filters[names.index("kong.auth")]
    assert "key-1" not in json.dumps(listener)  # credentials are never in the listener
    for resource in out[types.ROUTE]:
        routes = route_pb2.RouteConfiguration()
        resource.packed.Unpack(routes)
        assert "key-1" not in json.dumps(json_format.MessageToDict(routes))
    assert b"key-1" in ecds["kong.auth"].packed.value


def test_the_credential_table_is_rebuilt_only_when_an_entity_changes() -> None:
    ws = _workspace(5)
    first = consumers.lua_source(ws)
    assert (
        consumers.lua_source({k: dict(v) for k, v in ws.items()}) is first
    )  # same entities, copied collections
    changed = {k: dict(v) for k, v in ws.items()}
    changed["key-auths"]["k1"] = {**changed["key-auths"]["k1"], "key": "rotated"}
    assert "rotated" in consumers.lua_source(changed) and "rotated" not in first
    changed["plugins"] = {"x": _plugin("x", "request-termination", consumer="c1")}
    assert "consumer_routes = true" in consumers.lua_source(changed)
