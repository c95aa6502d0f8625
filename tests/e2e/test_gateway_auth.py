"""Kong's auth plugins end to end: a real control plane, a real gateway Envoy, consumers and credentials made
through the Admin API, requests through the gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import time
from collections.abc import Iterator
from pathlib import Path
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
    _created(kong.put(f"/services/alpha/routes/{name}", json={"paths": [f"/{name}"]}))
    for plugin in plugins:
        _created(kong.post(f"/routes/{name}/plugins", json=plugin))


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
    seen = _json(gw.get("/hidden/a?token=alice-key&b=2", headers={"apikey": "alice-key"}))
    assert seen["path"] == "/a?b=2" and seen["headers"]["x-consumer-id"] == alice["id"]
    seen = _json(gw.get("/hidden/a", headers={"X-Key": "alice-key"}))
    assert "x-key" not in seen["headers"] and seen["headers"]["x-consumer-username"] == "alice"
    form = gw.http.post("/hidden/f", data={"token": "alice-key", "keep": "yes"})
    assert form.status_code == 200, form.text
    assert _json(form)["body"] == "keep=yes"
    body = gw.http.post("/hidden/j", json={"token": "alice-key", "keep": [1, 2]})
    assert body.status_code == 200, body.text
    assert json.loads(_json(body)["body"]) == {"keep": [1, 2]}
    _route(kong, "queryonly", [{"name": "key-auth", "config": {"key_in_header": False}}])
    _served(gw, "/queryonly?apikey=alice-key", 200)
    assert gw.get("/queryonly", headers={"apikey": "alice-key"}).status_code == 401
