"""The auth filters' Lua helpers run in a real Envoy (LuaJIT): SHA-1 against FIPS 180-4's test vectors (and
hashlib on the padding boundaries), base64 and JSON as Kong's jwt parser reads them."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.gateway.plugins import auth
from isthmus.gateway.plugins.auth import consumers
from tests.conftest import free_port
from tests.e2e.harness import wait_for

HANDLER = """
function envoy_on_request(h)
  local op = h:headers():get("x-op")
  local body = h:body()
  local data = body and body:getBytes(0, body:length()) or ""
  local out
  if op == "sha1" then
    out = sha1_hex(data)
  elseif op == "b64url" then
    out = b64_decode(data, true) or "<nil>"
  elseif op == "json" then
    local v, err = json_decode(data)
    out = err and ("<error>") or json_encode(v)
  end
  h:respond({[":status"] = "200"}, out)
end
"""


def _envoy_config(port: int, filters: list[dict[str, Any]], routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "lua",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {"name": "all", "domains": ["*"], "routes": routes}
                                            ]
                                        },
                                        "http_filters": [
                                            *filters,
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }


@contextmanager
def _envoy(tmp: Path, config: dict[str, Any]) -> Iterator[None]:
    path = tmp / "envoy.json"
    path.write_text(json.dumps(config))
    with (tmp / "envoy.log").open("w") as log:
        proc = subprocess.Popen(
            [str(find_envoy_binary()), "-c", str(path), "--use-dynamic-base-id", "-l", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(10)


def _lua_filter(name: str, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": {"@type": auth.LUA_TYPE, "default_source_code": {"inline_string": source}},
    }


@pytest.fixture(scope="module")
def lua_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("lua")
    port = free_port()
    source = auth.lua("codec", "sha1") + HANDLER
    config = _envoy_config(port, [_lua_filter("test.lua", source)], [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with _envoy(tmp, config):
        wait_for(lambda: httpx.post(url, headers={"x-op": "sha1"}).status_code == 200, 30, what="lua envoy")
        yield url


def _run(url: str, op: str, data: bytes) -> bytes:
    response = httpx.post(url, headers={"x-op": op}, content=data, timeout=30)
    assert response.status_code == 200
    return response.content


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
        ),
        (
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "a49b2446a02c645bf419f995b67091253a04a259",
        ),
        (b"a" * 1_000_000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
    ],
)
def test_sha1_test_vectors(lua_envoy: str, message: bytes, digest: str) -> None:
    assert _run(lua_envoy, "sha1", message).decode() == digest


def test_sha1_padding_boundaries_and_bytes(lua_envoy: str) -> None:
    for size in (1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000):
        data = bytes((i * 37 + size) % 256 for i in range(size))
        assert _run(lua_envoy, "sha1", data).decode() == hashlib.sha1(data).hexdigest(), size


def test_kong_basic_auth_hash(lua_envoy: str) -> None:
    consumer_id = "0a4e3a48-43e3-4b55-b6f6-9cb57d43d5a4"
    salted = ("pässwörd" + consumer_id).encode()
    assert _run(lua_envoy, "sha1", salted).decode() == hashlib.sha1(salted).hexdigest()


def test_base64url_and_json(lua_envoy: str) -> None:
    assert _run(lua_envoy, "b64url", b"eyJhbGciOiJIUzI1NiJ9") == b'{"alg":"HS256"}'
    assert _run(lua_envoy, "b64url", b"_-8") == bytes([0xFF, 0xEF])
    assert _run(lua_envoy, "b64url", b"a!b") == b"<nil>"
    doc = {"iss": 'k\u00e9y "q"', "exp": 1700000000, "nested": {"list": [1, 2.5, True, "x"]}, "e": {}}
    assert json.loads(_run(lua_envoy, "json", json.dumps(doc).encode())) == doc
    assert _run(lua_envoy, "json", b'{"a": 1,}') == b"<error>"
    assert (
        _run(lua_envoy, "json", b'"\\ud83d\\ude00"') == json.dumps("\U0001f600", ensure_ascii=False).encode()
    )


def test_ten_thousand_consumers_compile_and_resolve(tmp_path: Path) -> None:
    """kong.auth's source with 10,000 consumers and keys loads in LuaJIT; the last key resolves its consumer,
    whose route copy the cleared route cache then selects."""
    from tests.unit.test_gateway_auth import _plugin, _workspace

    ws = _workspace(10_000)
    ws["plugins"]["x"] = _plugin("x", "request-termination", consumer="c9999")  # consumer routes on
    port = free_port()
    conf = {"key_names": ["apikey"], "key_in_header": True, "key_in_query": True, "key_in_body": False, "hide_credentials": False}  # fmt: skip
    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "x-consumer-id", "string_match": {"exact": "c9999"}}],
            },
            "direct_response": {"status": 200, "body": {"inline_string": "c9999"}},
        },
        {
            "match": {"prefix": "/"},
            "metadata": {"filter_metadata": {auth.AUTH: {"key-auth": conf}}},
            "direct_response": {"status": 204},
        },
    ]
    filters = [
        _lua_filter(auth.PRE, auth.lua("codec", "request", "pre")),
        _lua_filter(auth.AUTH, consumers.lua_source(ws)),
    ]
    url = f"http://127.0.0.1:{port}"
    with _envoy(tmp_path, _envoy_config(port, filters, routes)):
        wait_for(lambda: httpx.get(url).status_code == 401, 60, what="auth envoy")
        answer = httpx.get(url, headers={"apikey": "key-9999"})
        assert answer.status_code == 200 and answer.text == "c9999"
        assert httpx.get(url, headers={"apikey": "key-5"}).status_code == 204
        assert httpx.get(url, headers={"apikey": "nope"}).json() == {"message": "Unauthorized"}
