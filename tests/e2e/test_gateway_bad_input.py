"""Bad gateway input through the Admin API, ``POST /config`` and ``isthmus gateway apply``: Kong's error body (or
one readable CLI line), nothing stored, and a real gateway Envoy keeps serving its last good configuration."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ISTHMUS, App, ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json

pytestmark = pytest.mark.e2e

Setup = tuple[ControlPlane, httpx.Client, Gateway, Path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway-bad-input")
    cp = ControlPlane(tmp).start()
    alpha = App(tmp, "alpha").start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    gw: Gateway | None = None
    try:
        cp.apply(MESH)
        _created(kong.put("/services/alpha", json={"url": f"http://127.0.0.1:{alpha.port}"}))
        _created(kong.put("/services/alpha/routes/good", json={"paths": ["/good"]}))
        gw = Gateway(tmp, cp, "edge-bad").start()
        wait_for(lambda: _serves_good(gw), timeout=60, what="the gateway serves /good")
        yield cp, kong, gw, tmp
    finally:
        if gw is not None:
            gw.stop()
        kong.close()
        alpha.stop()
        cp.stop()


def _serves_good(gw: Gateway) -> bool:
    try:
        response = gw.get("/good/x")
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and _json(response)["service"] == "alpha"


def _state(kong: httpx.Client) -> tuple[str, list[str], list[str], list[str]]:
    """The configuration hash and the names of what is stored: any write shows in one of them."""
    root = _json(kong.get("/"))
    names = [
        sorted(str(e.get("name") or e.get("id")) for e in _json(kong.get(f"/{kind}"))["data"])
        for kind in ("services", "routes", "plugins")
    ]
    return str(root["configuration_hash"]), names[0], names[1], names[2]


def _kong_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = _json(response)
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


MISSING_ID = "00000000-0000-4000-8000-000000000000"
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, body, status, a text the error must contain)
    ("POST", "/routes", {"name": "lookbehind", "paths": ["~/(?<=a)b"]}, 400, "invalid regex"),
    ("POST", "/routes", {"name": "backref", "paths": [r"~/(a)\1"]}, 400, "invalid regex"),
    ("POST", "/routes", {"name": "bad-header", "headers": {"x": ["~*(?=y)"]}, "paths": ["/h"]}, 400, "regex"),
    ("POST", "/plugins", {"name": "not-a-plugin"}, 400, "not-a-plugin"),
    ("POST", "/plugins", {"name": "hmac-auth"}, 400, "not supported yet"),
    ("POST", "/plugins", {"name": "rate-limiting", "config": {"minute": -1}}, 400, "minute"),
    ("POST", "/services", {"name": "alpha", "host": "other.example"}, 409, "UNIQUE violation"),
    ("POST", "/services", {"name": "bad port", "host": "x", "port": 70000}, 400, "port"),
    ("POST", "/services/alpha/routes", {"name": "good", "paths": ["/again"]}, 409, "UNIQUE violation"),
    ("POST", "/routes", {"name": "no-match-fields"}, 400, "must set one of"),
    ("PATCH", "/routes/good", {"paths": ["no-slash"]}, 400, "should start with"),
    ("PUT", "/routes/good", {"service": {"id": MISSING_ID}, "paths": ["/g"]}, 400, "service"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), BAD_REQUESTS)
def test_bad_admin_api_input_changes_nothing(
    setup: Setup, method: str, path: str, body: dict[str, Any], status: int, text: str
) -> None:
    _cp, kong, gw, _tmp = setup
    before = _state(kong)
    error = _kong_error(kong.request(method, path, json=body), status)
    assert text.lower() in str(error).lower(), error
    assert _state(kong) == before
    assert _serves_good(gw)


BAD_FILE = """_format_version: "3.0"
services:
- name: alpha
  url: http://127.0.0.1:1
  routes:
  - name: replaced
    paths: ["~/(?<=x)y"]
  plugins:
  - name: key-auth-typo
"""


def test_bad_declarative_file_changes_nothing(setup: Setup) -> None:
    cp, kong, gw, tmp = setup
    before = _state(kong)
    response = kong.post("/config", params={"flatten_errors": "1"}, json={"config": BAD_FILE})
    body = _kong_error(response, 400)
    flat = str(body.get("flattened_errors"))
    assert "invalid regex" in flat and "key-auth-typo" in flat, body
    assert _state(kong) == before
    path = tmp / "bad-kong.yaml"
    path.write_text(BAD_FILE)
    admin = f"http://127.0.0.1:{cp.gateway_admin_port}"
    run = subprocess.run(
        [*ISTHMUS, "gateway", "apply", "-f", str(path), "--gateway-admin-address", admin],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run
    assert run.stderr.strip().count("\n") == 0 and run.stderr.strip(), run.stderr
    assert _state(kong) == before
    assert _serves_good(gw)


def test_unsafe_files_are_refused_at_the_door(setup: Setup) -> None:
    _cp, kong, gw, _tmp = setup
    before = _state(kong)
    aliases = '_format_version: "3.0"\nservices:\n- &s {name: a1, host: x}\n- *s\n'
    _kong_error(kong.post("/config", json={"config": aliases}), 400)
    deep = '_format_version: "3.0"\ntags: ' + "[" * 1000 + "]" * 1000 + "\n"
    _kong_error(kong.post("/config", json={"config": deep}), 400)
    huge = kong.post("/config", content=b'{"config": "' + b"x" * (17 * 1024 * 1024) + b'"}')  # over 16 MiB
    assert huge.status_code == 413, huge.text
    assert _state(kong) == before
    assert _serves_good(gw)
