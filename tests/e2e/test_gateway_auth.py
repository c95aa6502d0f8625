"""Kong's auth plugins end to end: a real control plane, a real gateway Envoy, consumers and credentials made
through the Admin API, requests through the gateway."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json

pytestmark = pytest.mark.e2e

Setup = tuple[ControlPlane, httpx.Client, "Echo", Gateway]


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with what reached the upstream: path with query, all headers, the body."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        payload = json.dumps(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Echo:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Echo:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway-auth")
    cp = ControlPlane(tmp).start()
    alpha = Echo().start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    gw: Gateway | None = None
    try:
        cp.apply(MESH)
        _created(kong.put("/services/alpha", json={"url": f"http://127.0.0.1:{alpha.port}"}))
        _created(kong.put("/services/alpha/routes/open", json={"paths": ["/open"]}))
        gw = Gateway(tmp, cp, "edge-auth").start()
        wait_for(lambda: gw.get("/open").status_code == 200, 60, what="gateway serving /open")  # type: ignore[union-attr]
        yield cp, kong, alpha, gw
    finally:
        if gw is not None:
            gw.stop()
        kong.close()
        alpha.stop()
        cp.stop()


def _upstream_headers(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    headers: dict[str, str] = _json(response)["headers"]
    return headers


def _route(kong: httpx.Client, name: str, plugins: list[dict[str, Any]]) -> None:
    """A route reachable on ``/<name>`` only once all its plugins are attached (the gateway applies each Admin
    API call as it comes: a route made first would serve a moment with only its first plugins)."""
    _created(kong.put(f"/services/alpha/routes/{name}", json={"paths": [f"/_pending/{name}"]}))
    for plugin in plugins:
        _created(kong.post(f"/routes/{name}/plugins", json=plugin))
    _created(kong.patch(f"/routes/{name}", json={"paths": [f"/{name}"]}))


def _served(gw: Gateway, path: str, status: int, **kwargs: Any) -> None:
    wait_for(lambda: gw.get(path, **kwargs).status_code == status, 30, what=f"{path} answering {status}")


def test_consumer_headers_cannot_be_forged(setup: Setup) -> None:
    _, _, _, gw = setup
    forged = {
        "X-Consumer-ID": "x",
        "X-Consumer-Username": "admin",
        "X-Consumer-Custom-ID": "c",
        "X-Credential-Identifier": "k",
        "X-Anonymous-Consumer": "false",
        "X-Consumer-Groups": "admins",
    }
    seen = _upstream_headers(gw.get("/open", headers=forged))
    assert not {k.lower() for k in forged} & set(seen)


def test_key_auth(setup: Setup) -> None:
    _, kong, _, gw = setup
    alice = _created(kong.put("/consumers/alice", json={"custom_id": "a-1"}))
    cred = _created(kong.post("/consumers/alice/key-auth", json={"key": "alice-key"}))
    _route(kong, "keyed", [{"name": "key-auth"}])
    _served(gw, "/keyed", 401)
    missing = gw.get("/keyed")
    assert missing.json() == {"message": "No API key found in request"}
    assert missing.headers["www-authenticate"] == "Key"
    assert missing.headers["content-type"] == "application/json; charset=utf-8"
    bad = gw.get("/keyed", headers={"apikey": "nope"})
    assert bad.status_code == 401 and bad.json() == {"message": "Unauthorized"}
    dup = gw.get("/keyed?apikey=a&apikey=b")
    assert dup.status_code == 401 and dup.json() == {"message": "Duplicate API key found"}
    _served(gw, "/keyed", 200, headers={"apikey": "alice-key"})
    seen = _upstream_headers(gw.get("/keyed", headers={"apikey": "alice-key"}))
    assert seen["x-consumer-id"] == alice["id"]
    assert seen["x-consumer-username"] == "alice"
    assert seen["x-consumer-custom-id"] == "a-1"
    assert seen["x-credential-identifier"] == cred["id"]
    assert "x-anonymous-consumer" not in seen
    assert seen["apikey"] == "alice-key"  # hide_credentials is off
    by_query = _json(gw.get("/keyed/x?apikey=alice-key&other=1"))
    assert by_query["headers"]["x-consumer-id"] == alice["id"]
    assert by_query["path"] == "/x?apikey=alice-key&other=1"
    # hide_credentials, custom key names, key_in_body, realm, key_in_header off
    config = {"key_names": ["x-key", "token"], "hide_credentials": True, "key_in_body": True, "realm": "shop"}
    _route(kong, "hidden", [{"name": "key-auth", "config": config}])
    _served(gw, "/hidden", 401)
    assert gw.get("/hidden").headers["www-authenticate"] == 'Key realm="shop"'
    echoed = _json(gw.get("/hidden/a?token=alice-key&b=2", headers={"apikey": "alice-key"}))
    assert echoed["path"] == "/a?b=2" and echoed["headers"]["x-consumer-id"] == alice["id"]
    echoed = _json(gw.get("/hidden/a", headers={"X-Key": "alice-key"}))
    assert "x-key" not in echoed["headers"] and echoed["headers"]["x-consumer-username"] == "alice"
    form = gw.http.post("/hidden/f", data={"token": "alice-key", "keep": "yes"})
    assert form.status_code == 200, form.text
    assert _json(form)["body"] == "keep=yes"
    body = gw.http.post("/hidden/j", json={"token": "alice-key", "keep": [1, 2]})
    assert body.status_code == 200, body.text
    assert json.loads(_json(body)["body"]) == {"keep": [1, 2]}
    _route(kong, "queryonly", [{"name": "key-auth", "config": {"key_in_header": False}}])
    _served(gw, "/queryonly?apikey=alice-key", 200)
    assert gw.get("/queryonly", headers={"apikey": "alice-key"}).status_code == 401


def _route_filters(gw: Gateway, path: str) -> set[str]:
    """The per-route filter names of the gateway's Envoy route whose match names ``path``."""
    dump = httpx.get(
        f"http://127.0.0.1:{gw.admin_port}/config_dump", params={"resource": "dynamic_route_configs"}
    )
    found: set[str] = set()
    for config in dump.json()["configs"]:
        for vhost in config["route_config"].get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                if f'"{path}' in json.dumps(route["match"]):
                    found |= set(route.get("typed_per_filter_config", {}))
    return found


def test_key_auth_native_path(setup: Setup) -> None:
    """key-auth alone with one key name runs as an Envoy matcher (no Lua for a good key); every other request
    is settled by the Lua exactly as on other routes."""
    _, kong, _, gw = setup
    nina = _created(kong.put("/consumers/nina", json={"username": "nina"}))
    cred = _created(kong.post("/consumers/nina/key-auth", json={"key": "nina-key"}))
    guest = _created(kong.put("/consumers/visitor", json={}))
    _route(
        kong, "native", [{"name": "key-auth", "config": {"key_names": ["X-Key"], "hide_credentials": True}}]
    )
    _route(kong, "guests", [{"name": "key-auth", "config": {"anonymous": guest["id"]}}])
    _served(gw, "/native", 200, headers={"x-key": "nina-key"})
    assert any(f.startswith("kong.key.") for f in _route_filters(gw, "/native"))
    assert "kong.auth" not in _route_filters(gw, "/native")
    seen = _upstream_headers(gw.get("/native", headers={"x-key": "nina-key"}))
    assert seen["x-consumer-id"] == nina["id"] and seen["x-consumer-username"] == "nina"
    assert seen["x-credential-identifier"] == cred["id"] and "x-key" not in seen
    # the Lua behind the matcher: Kong's answers, the key in the query (removed under hide_credentials)
    missing = gw.get("/native")
    assert missing.status_code == 401 and missing.json() == {"message": "No API key found in request"}
    assert gw.get("/native", headers={"x-key": "wrong"}).json() == {"message": "Unauthorized"}
    twice = gw.http.get("/native", headers=[("x-key", "nina-key"), ("x-key", "nina-key")])
    assert twice.status_code == 401 and twice.json() == {"message": "Duplicate API key found"}
    queried = gw.get("/native/q?X-Key=nina-key&a=1")  # query names are case-sensitive, as in Kong
    assert queried.status_code == 200, (queried.status_code, queried.text)
    by_query = _json(queried)
    assert by_query["path"] == "/q?a=1" and by_query["headers"]["x-consumer-id"] == nina["id"]
    # anonymous: a good key is the consumer, no key the anonymous one
    wait_for(lambda: gw.get("/guests").status_code == 200, 30, what="anonymous on /guests")
    assert _upstream_headers(gw.get("/guests"))["x-anonymous-consumer"] == "true"
    assert _upstream_headers(gw.get("/guests", headers={"apikey": "nina-key"}))["x-consumer-id"] == nina["id"]
    # a stored '%' reaches the service as it is (never an Envoy format command)
    _created(kong.post("/consumers", json={"username": "50%off %REQ(x-key)%"}))
    _created(kong.post("/consumers/50%25off%20%25REQ(x-key)%25/key-auth", json={"key": "pct-key"}))
    _served(gw, "/native", 200, headers={"x-key": "pct-key"})
    named = _upstream_headers(gw.get("/native", headers={"x-key": "pct-key"}))
    assert named["x-consumer-username"] == "50%off %REQ(x-key)%"
    # a rotated key: the new one passes, the old one is refused (the matcher's map comes by ECDS)
    _created(kong.patch(f"/consumers/nina/key-auth/{cred['id']}", json={"key": "nina-key-2"}))
    _served(gw, "/native", 200, headers={"x-key": "nina-key-2"})
    assert gw.get("/native", headers={"x-key": "nina-key"}).status_code == 401


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth(setup: Setup) -> None:
    _, kong, _, gw = setup
    bob = _created(kong.put("/consumers/bob", json={}))
    _created(kong.post("/consumers/bob/basic-auth", json={"username": "bob", "password": "s3cret:x"}))
    _route(kong, "basic", [{"name": "basic-auth", "config": {"hide_credentials": True}}])
    _served(gw, "/basic", 401)
    missing = gw.get("/basic")
    assert missing.json() == {"message": "Unauthorized"}
    assert missing.headers["www-authenticate"] == 'Basic realm="service"'
    assert gw.get("/basic", headers=_basic("bob", "wrong")).status_code == 401
    assert gw.get("/basic", headers=_basic("nobody", "s3cret:x")).status_code == 401
    assert gw.get("/basic", headers={"Authorization": "Basic !!!"}).status_code == 401
    _served(gw, "/basic", 200, headers=_basic("bob", "s3cret:x"))
    seen = _upstream_headers(gw.get("/basic", headers=_basic("bob", "s3cret:x")))
    assert seen["x-consumer-id"] == bob["id"] and seen["x-credential-identifier"] == "bob"
    assert "authorization" not in seen  # hide_credentials
    # Proxy-Authorization is tried first
    proxy = {"Proxy-Authorization": _basic("bob", "s3cret:x")["Authorization"], "Authorization": "Bearer x"}
    assert gw.get("/basic", headers=proxy).status_code == 200


def test_basic_auth_with_a_password_hash_dumped_from_kong(setup: Setup) -> None:
    """A decK file from Kong keeps passwords as Kong stored them (sha1(password .. consumer_id) in hex); the
    gateway verifies them as Kong does."""
    _, kong, _, gw = setup
    consumer_id = "9f1d2a3c-1111-4222-8333-444455556666"
    stored = hashlib.sha1(("kongpass" + consumer_id).encode()).hexdigest()
    doc = {
        "_format_version": "3.0",
        "_transform": False,
        "_info": {"select_tags": ["dumped"]},
        "consumers": [
            {
                "id": consumer_id,
                "username": "dumped",
                "basicauth_credentials": [{"username": "dumped-user", "password": stored}],
            }
        ],
    }
    applied = kong.post("/config", json=doc)
    assert applied.status_code == 201, applied.text
    _route(kong, "dumped", [{"name": "basic-auth"}])
    _served(gw, "/dumped", 401)
    assert gw.get("/dumped", headers=_basic("dumped-user", "kongpass")).status_code == 200
    assert gw.get("/dumped", headers=_basic("dumped-user", stored)).status_code == 401


def _rsa_pem() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_jwt(setup: Setup) -> None:
    import jwt as pyjwt

    _, kong, _, gw = setup
    carol = _created(kong.put("/consumers/carol", json={}))
    _created(kong.post("/consumers/carol/jwt", json={"key": "carol-iss", "secret": "carol-secret"}))
    _route(kong, "jwt", [{"name": "jwt"}])
    _served(gw, "/jwt", 401)
    missing = gw.get("/jwt")
    assert missing.json() == {"message": "Unauthorized"} and missing.headers["www-authenticate"] == "Bearer"
    good = pyjwt.encode({"iss": "carol-iss", "sub": "x"}, "carol-secret", algorithm="HS256")
    _served(gw, "/jwt", 200, headers=_bearer(good))
    seen = _upstream_headers(gw.get("/jwt", headers=_bearer(good)))
    assert seen["x-consumer-id"] == carol["id"] and seen["x-credential-identifier"] == "carol-iss"
    assert seen["authorization"] == f"Bearer {good}"  # Kong forwards the token
    assert "x-isthmus-jwt" not in seen
    assert gw.get(f"/jwt?jwt={good}").status_code == 200

    def refused(message: str, **kwargs: Any) -> None:
        response = gw.get("/jwt", **kwargs)
        assert response.status_code == 401, response.text
        assert response.json() == {"message": message}
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    other = pyjwt.encode({"iss": "carol-iss", "n": 1}, "carol-secret", algorithm="HS256")
    refused("Multiple tokens provided", params={"jwt": other}, headers=_bearer(good))
    refused(
        "Invalid signature", headers=_bearer(pyjwt.encode({"iss": "carol-iss"}, "wrong", algorithm="HS256"))
    )
    refused("No credentials found for given 'iss'", headers=_bearer(pyjwt.encode({"iss": "x"}, "k", algorithm="HS256")))  # fmt: skip
    refused("No mandatory 'iss' in claims", headers=_bearer(pyjwt.encode({"a": 1}, "carol-secret", algorithm="HS256")))  # fmt: skip
    refused("Bad token; invalid JSON", headers=_bearer("abc"))
    refused("Invalid algorithm", headers=_bearer(pyjwt.encode({"iss": "carol-iss"}, "carol-secret", algorithm="HS384")))  # fmt: skip
    # Kong checks exp only when claims_to_verify names it
    expired = pyjwt.encode(
        {"iss": "carol-iss", "exp": int(time.time()) - 3600}, "carol-secret", algorithm="HS256"
    )
    assert gw.get("/jwt", headers=_bearer(expired)).status_code == 200

    config = {
        "claims_to_verify": ["exp"],
        "maximum_expiration": 3600,
        "cookie_names": ["session"],
        "header_names": ["x-token"],
        "uri_param_names": [],
        "realm": "api",
    }
    _route(kong, "claims", [{"name": "jwt", "config": config}])
    _served(gw, "/claims", 401)
    soon = pyjwt.encode(
        {"iss": "carol-iss", "exp": int(time.time()) + 600}, "carol-secret", algorithm="HS256"
    )
    fresh = gw.get("/claims", headers={"x-token": f"bearer {soon}"})
    assert fresh.status_code == 200, (fresh.text, fresh.headers)
    assert gw.get("/claims", cookies={"session": soon}).status_code == 200
    assert gw.get(f"/claims?jwt={soon}").status_code == 401  # uri_param_names is empty
    late = gw.get("/claims", headers={"x-token": f"Bearer {expired}"})
    assert late.status_code == 401 and late.json() == {"exp": "token expired"}
    assert late.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'
    far = pyjwt.encode(
        {"iss": "carol-iss", "exp": int(time.time()) + 7200}, "carol-secret", algorithm="HS256"
    )
    too_long = gw.get("/claims", headers={"x-token": f"Bearer {far}"})
    assert too_long.status_code == 401 and too_long.json() == {"exp": "exceeds maximum allowed expiration"}
    no_exp = gw.get("/claims", headers={"x-token": f"Bearer {good}"})
    assert no_exp.status_code == 401 and no_exp.json() == {"exp": "must be a number"}


def test_jwt_asymmetric_and_base64_secrets(setup: Setup) -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    _, kong, _, gw = setup
    dave = _created(kong.put("/consumers/dave", json={}))
    private, public = _rsa_pem()
    _created(
        kong.post(
            "/consumers/dave/jwt", json={"key": "dave-rsa", "algorithm": "RS256", "rsa_public_key": public}
        )
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _created(kong.post("/consumers/dave/jwt", json={"key": "dave-ec", "algorithm": "ES256", "rsa_public_key": ec_public.decode()}))  # fmt: skip
    _route(kong, "rsa", [{"name": "jwt"}])
    _served(gw, "/rsa", 401)
    token = pyjwt.encode({"iss": "dave-rsa"}, private, algorithm="RS256")
    _served(gw, "/rsa", 200, headers=_bearer(token))
    assert _upstream_headers(gw.get("/rsa", headers=_bearer(token)))["x-consumer-id"] == dave["id"]
    stranger, _ = _rsa_pem()
    forged = gw.get("/rsa", headers=_bearer(pyjwt.encode({"iss": "dave-rsa"}, stranger, algorithm="RS256")))
    assert forged.status_code == 401 and forged.json() == {"message": "Invalid signature"}
    assert gw.get("/rsa", headers=_bearer(pyjwt.encode({"iss": "dave-ec"}, ec_key, algorithm="ES256"))).status_code == 200  # fmt: skip
    # secret_is_base64: the credential holds the secret base64-encoded, tokens are signed with the raw bytes
    raw = b"raw-secret-bytes\x00\xff"
    _created(kong.post("/consumers/dave/jwt", json={"key": "dave-b64", "secret": base64.urlsafe_b64encode(raw).decode()}))  # fmt: skip
    _route(kong, "b64", [{"name": "jwt", "config": {"secret_is_base64": True}}])
    _served(gw, "/b64", 401)
    signed = pyjwt.encode({"iss": "dave-b64"}, raw, algorithm="HS256")
    _served(gw, "/b64", 200, headers=_bearer(signed))
    # refused at apply: what Isthmus cannot honour
    bad = kong.post("/routes/b64/plugins", json={"name": "jwt", "config": {"key_claim_name": "kid"}})
    assert bad.status_code == 400
    assert "not supported yet" in bad.json()["fields"]["config"]["key_claim_name"]


def test_acl(setup: Setup) -> None:
    _, kong, _, gw = setup
    for name, groups in (("erin", ["admins", "ops"]), ("frank", ["users"]), ("gina", [])):
        _created(kong.put(f"/consumers/{name}", json={}))
        _created(kong.post(f"/consumers/{name}/key-auth", json={"key": f"{name}-key"}))
        for group in groups:
            _created(kong.post(f"/consumers/{name}/acls", json={"group": group}))
    _route(kong, "admin", [{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["admins"]}}])
    _route(kong, "public", [{"name": "key-auth"}, {"name": "acl", "config": {"deny": ["admins"], "hide_groups_header": True}}])  # fmt: skip
    _served(gw, "/admin", 401)
    _served(gw, "/admin", 200, headers={"apikey": "erin-key"})
    seen = _upstream_headers(gw.get("/admin", headers={"apikey": "erin-key"}))
    assert seen["x-consumer-groups"] == "admins, ops"
    denied = gw.get("/admin", headers={"apikey": "frank-key"})
    assert denied.status_code == 403 and denied.json() == {"message": "You cannot consume this service"}
    assert gw.get("/admin", headers={"apikey": "gina-key"}).status_code == 403  # no groups at all
    _served(gw, "/public", 403, headers={"apikey": "erin-key"})
    seen = _upstream_headers(gw.get("/public", headers={"apikey": "frank-key"}))
    assert "x-consumer-groups" not in seen
    assert gw.get("/public", headers={"apikey": "gina-key"}).status_code == 200  # deny: no groups passes
    # an acl plugin configuration is refused with Kong's entity check
    bad = kong.post("/routes/public/plugins", json={"name": "acl", "config": {}})
    assert bad.status_code == 400 or bad.status_code == 409


def test_anonymous_and_multiple_auth_plugins(setup: Setup) -> None:
    """Kong's logical OR: with ``anonymous`` set, the first plugin that authenticates wins and later ones skip; a
    request no plugin authenticates goes on as the anonymous consumer."""
    _, kong, _, gw = setup
    guest = _created(kong.put("/consumers/guest", json={}))
    henry = _created(kong.put("/consumers/henry", json={}))
    _created(kong.post("/consumers/henry/key-auth", json={"key": "henry-key"}))
    _created(kong.post("/consumers/henry/basic-auth", json={"username": "henry", "password": "pw"}))
    ivy = _created(kong.put("/consumers/ivy", json={}))
    _created(kong.post("/consumers/ivy/basic-auth", json={"username": "ivy", "password": "pw2"}))
    plugins = [
        {"name": "key-auth", "config": {"anonymous": guest["id"]}},
        {"name": "basic-auth", "config": {"anonymous": "guest"}},  # by username
    ]
    _route(kong, "either", plugins)
    wait_for(lambda: "x-consumer-id" in _upstream_headers(gw.get("/either")), 30, what="anonymous on /either")
    seen = _upstream_headers(gw.get("/either"))
    assert seen["x-consumer-id"] == guest["id"] and seen["x-anonymous-consumer"] == "true"
    assert "x-credential-identifier" not in seen
    by_key = _upstream_headers(gw.get("/either", headers={"apikey": "henry-key", **_basic("ivy", "pw2")}))
    assert by_key["x-consumer-id"] == henry["id"]  # key-auth (1250) ran first; basic-auth skipped
    by_basic = _upstream_headers(gw.get("/either", headers=_basic("ivy", "pw2")))
    assert by_basic["x-consumer-id"] == ivy["id"] and "x-anonymous-consumer" not in by_basic
    # logical AND: without anonymous both must pass
    _route(kong, "both", [{"name": "key-auth"}, {"name": "basic-auth"}])
    _served(gw, "/both", 401, headers={"apikey": "henry-key"})
    both = _upstream_headers(gw.get("/both", headers={"apikey": "henry-key", **_basic("henry", "pw")}))
    assert both["x-consumer-id"] == henry["id"] and both["x-credential-identifier"] == "henry"
    # an anonymous consumer that does not exist: Kong's 500
    _route(kong, "ghost", [{"name": "key-auth", "config": {"anonymous": "nobody"}}])
    _served(gw, "/ghost", 500)
    assert gw.get("/ghost").json() == {"message": "anonymous consumer nobody is configured but doesn't exist"}
    # acl after an anonymous consumer without groups: 401
    _route(kong, "members", [{"name": "key-auth", "config": {"anonymous": "guest"}}, {"name": "acl", "config": {"allow": ["members"]}}])  # fmt: skip
    _served(gw, "/members", 401)
    assert gw.get("/members").json() == {"message": "Unauthorized"}
    # run_on_preflight false: OPTIONS passes unauthenticated
    _route(kong, "preflight", [{"name": "key-auth", "config": {"run_on_preflight": False}}])
    _served(gw, "/preflight", 401)
    assert gw.http.options("/preflight").status_code == 200


def test_consumer_scoped_plugin_configurations(setup: Setup) -> None:
    _, kong, _, gw = setup
    blocked = _created(kong.put("/consumers/blocked", json={}))
    _created(kong.post("/consumers/blocked/key-auth", json={"key": "blocked-key"}))
    _created(kong.put("/consumers/kept", json={}))
    _created(kong.post("/consumers/kept/key-auth", json={"key": "kept-key"}))
    _route(kong, "scoped", [{"name": "key-auth"}])
    termination = {
        "name": "request-termination",
        "config": {"status_code": 403, "message": "consumer blocked"},
    }
    _created(kong.post(f"/consumers/{blocked['id']}/plugins", json=termination))
    _served(gw, "/scoped", 403, headers={"apikey": "blocked-key"})
    assert gw.get("/scoped", headers={"apikey": "blocked-key"}).json() == {"message": "consumer blocked"}
    assert gw.get("/scoped", headers={"apikey": "kept-key"}).status_code == 200
    # a forged X-Consumer-ID never selects a consumer's route copy
    assert (
        gw.get("/scoped", headers={"apikey": "kept-key", "X-Consumer-ID": blocked["id"]}).status_code == 200
    )
    assert gw.get("/open", headers={"X-Consumer-ID": blocked["id"]}).status_code == 200
    # a route+consumer configuration beats the route one (Kong's precedence 2 > 6)
    _created(kong.post("/routes/scoped/plugins", json={"name": "rate-limiting", "config": {"minute": 1000}}))
    limited = {"name": "rate-limiting", "route": {"name": "scoped"}, "config": {"minute": 2}}
    _created(kong.post("/consumers/kept/plugins", json=limited))
    wait_for(
        lambda: gw.get("/scoped", headers={"apikey": "kept-key"}).status_code == 429, 30, what="kept limited"
    )


def _listener_versions(gw: Gateway) -> dict[str, str]:
    dump = httpx.get(
        f"http://127.0.0.1:{gw.admin_port}/config_dump", params={"resource": "dynamic_listeners"}
    ).json()
    return {c["name"]: c["active_state"]["version_info"] for c in dump["configs"] if "active_state" in c}


def test_credential_changes_under_traffic_drop_no_request(setup: Setup) -> None:
    """Consumers and credentials travel by ECDS: changing them replaces two filter configurations, never the
    listener (no drain) nor the routes, and requests in flight all succeed."""
    _, kong, _, gw = setup
    _created(kong.put("/consumers/steady", json={}))
    _created(kong.post("/consumers/steady/key-auth", json={"key": "steady-key"}))
    _route(kong, "steady", [{"name": "key-auth"}])
    _served(gw, "/steady", 401)
    assert gw.get("/steady", headers={"apikey": "steady-key"}).status_code == 200
    listeners = _listener_versions(gw)
    results: list[int | str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=5) as client:
            while not stop.is_set():
                try:
                    results.append(client.get("/steady", headers={"apikey": "steady-key"}).status_code)
                except httpx.HTTPError as exc:
                    results.append(repr(exc))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        for i in range(15):
            _created(kong.put(f"/consumers/churn-{i}", json={"custom_id": f"c{i}"}))
            _created(kong.post(f"/consumers/churn-{i}/key-auth", json={"key": f"churn-key-{i}"}))
            if i % 3 == 2:
                assert kong.delete(f"/consumers/churn-{i - 1}").status_code == 204
            time.sleep(0.1)
        wait_for(
            lambda: gw.get("/steady", headers={"apikey": "churn-key-14"}).status_code == 200,
            30,
            what="new key",
        )
        wait_for(
            lambda: gw.get("/steady", headers={"apikey": "churn-key-13"}).status_code == 401,
            30,
            what="deleted",
        )
    finally:
        stop.set()
        thread.join()
    assert len(results) > 20
    assert set(results) == {200}, [r for r in results if r != 200][:5]
    assert _listener_versions(gw) == listeners  # no listener update, hence no drain


def test_kong_docs_examples(setup: Setup) -> None:
    """The examples of Kong's plugin pages (developer.konghq.com/plugins/<name>/examples), sent as the pages send
    them (``POST /plugins``, a global plugin), behave as documented."""
    import jwt as pyjwt

    _, kong, _, gw = setup
    _created(kong.put("/services/alpha/routes/docs", json={"paths": ["/docs"]}))
    _created(kong.put("/consumers/doc-user", json={}))
    _created(kong.post("/consumers/doc-user/key-auth", json={"key": "doc-key"}))
    _created(kong.post("/consumers/doc-user/jwt", json={"key": "doc-iss", "secret": "doc-secret"}))
    _served(gw, "/docs", 200)

    # key-auth, "Enable Key Auth": requests without a key get 401 "No API key found in request"
    plugin = _created(
        kong.post("/plugins/", json={"name": "key-auth", "config": {"key_names": ["apikey"]}, "tags": []})
    )
    _served(gw, "/docs", 401)
    assert gw.get("/docs").json() == {"message": "No API key found in request"}
    assert gw.get("/docs", headers={"apikey": "doc-key"}).status_code == 200
    assert kong.delete(f"/plugins/{plugin['id']}").status_code == 204
    _served(gw, "/docs", 200)

    # jwt, "Verify registered claims": exp and nbf are checked
    plugin = _created(kong.post("/plugins/", json={"name": "jwt", "config": {"claims_to_verify": ["exp", "nbf"]}, "tags": []}))  # fmt: skip
    _served(gw, "/docs", 401)
    now = int(time.time())
    valid = pyjwt.encode(
        {"iss": "doc-iss", "exp": now + 600, "nbf": now - 10}, "doc-secret", algorithm="HS256"
    )
    assert gw.get("/docs", headers=_bearer(valid)).status_code == 200
    expired = pyjwt.encode(
        {"iss": "doc-iss", "exp": now - 10, "nbf": now - 20}, "doc-secret", algorithm="HS256"
    )
    assert gw.get("/docs", headers=_bearer(expired)).json() == {"exp": "token expired"}
    early = pyjwt.encode(
        {"iss": "doc-iss", "exp": now + 600, "nbf": now + 300}, "doc-secret", algorithm="HS256"
    )
    assert gw.get("/docs", headers=_bearer(early)).json() == {"nbf": "token not valid yet"}
    assert kong.delete(f"/plugins/{plugin['id']}").status_code == 204

    # acl, "Allow Consumer Groups": consumer groups are Kong Enterprise's; refused, never stored and ignored
    example = {
        "name": "acl",
        "config": {"include_consumer_groups": True, "allow": ["dev", "admin"]},
        "tags": [],
    }
    refused = kong.post("/plugins/", json=example)
    assert refused.status_code == 400
    assert "not supported yet" in refused.json()["fields"]["config"]["include_consumer_groups"]
