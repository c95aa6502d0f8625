"""request-transformer, response-transformer, ip-restriction and proxy-cache end to end: a real control plane, a
real gateway Envoy, plugins made through the Admin API with the configuration examples of Kong's docs pages, and a
backend that echoes what it got (method, path with query, headers, body) and answers as the request asks."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created, _json

pytestmark = pytest.mark.e2e


class _Echo(BaseHTTPRequestHandler):
    """Echoes the request as JSON; ``x-status``, ``x-content-type`` and ``x-body`` set the answer's status, type and
    body and ``x-reply-<name>: <value>`` adds a response header."""

    protocol_version = "HTTP/1.1"
    hits: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.hits.append(self.path)
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "all_headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body,
        }
        data = (self.headers.get("x-body") or json.dumps(echo)).encode()
        self.send_response(int(self.headers.get("x-status") or 200))
        self.send_header("content-type", self.headers.get("x-content-type") or "application/json")
        for name, value in self.headers.items():
            if name.lower().startswith("x-reply-"):
                self.send_header(name[len("x-reply-") :], value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


@dataclass
class Setup:
    cp: ControlPlane
    kong: httpx.Client
    gw: Gateway
    backend: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway-transform")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cp = ControlPlane(tmp).start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    gw: Gateway | None = None
    try:
        cp.apply(MESH)
        backend = f"http://127.0.0.1:{server.server_address[1]}"
        _created(kong.put("/services/echo", json={"url": backend}))
        _created(kong.put("/services/echo/routes/ready", json={"paths": ["/ready"]}))
        gw = Gateway(tmp, cp, "edge-transform").start()
        try:
            wait_for(lambda: gw.get("/ready").status_code == 200, 60, what="gateway serving")
        except AssertionError as exc:  # say why: the gateway agent's and the control plane's last lines
            logs = f"gateway:\n{gw.proc.log()[-4000:]}\ncontrol plane:\n{cp.proc.log()[-4000:] if cp.proc else ''}"
            raise AssertionError(f"{exc}\n{logs}") from None
        yield Setup(cp, kong, gw, backend)
    finally:
        if gw is not None:
            gw.stop()
        kong.close()
        cp.stop()
        server.shutdown()


def _route(s: Setup, name: str, paths: list[str], plugin: str, config: dict[str, Any]) -> None:
    _created(s.kong.put(f"/services/echo/routes/{name}", json={"paths": paths}))
    _created(s.kong.post(f"/routes/{name}/plugins", json={"name": plugin, "config": config}))


def _refused(s: Setup, plugin: str, config: dict[str, Any], fields: dict[str, Any]) -> None:
    """A bad configuration: Kong's 400 body naming the field, and nothing stored."""
    before = s.kong.get("/plugins").json()["data"]
    bad = s.kong.post("/plugins", json={"name": plugin, "config": config})
    assert bad.status_code == 400, bad.text
    assert bad.json()["name"] == "schema violation"
    assert bad.json()["fields"] == fields
    assert s.kong.get("/plugins").json()["data"] == before


def _applied(s: Setup, path: str, check: Any, **kwargs: Any) -> httpx.Response:
    """The gateway's answer for ``path`` once ``check`` holds (the configuration reached the gateway)."""

    def ready() -> httpx.Response | None:
        method = kwargs.get("method", "GET")
        response = s.gw.http.request(method, path, headers=kwargs.get("headers"), json=kwargs.get("json"))
        return response if check(response) else None

    answer = wait_for(ready, 60, what=f"configuration applied for {path}")
    assert answer is not None
    return answer


def test_request_transformer_docs_examples(setup: Setup) -> None:
    s = setup
    # "Add a new header"
    _route(s, "rt-add", ["/rt-add"], "request-transformer", {"add": {"headers": ["New-Header:Header Value"]}})
    added = _applied(s, "/rt-add", lambda r: r.status_code == 200 and "new-header" in _json(r)["headers"])
    assert _json(added)["headers"]["new-header"] == "Header Value"
    kept = s.gw.get("/rt-add", headers={"New-Header": "mine"})
    assert _json(kept)["headers"]["new-header"] == "mine"  # add never overwrites
    # "Append and remove": a query parameter appended (its value as written, leading space included), a header gone
    config = {"append": {"querystring": ["client_id: abc123"]}, "remove": {"headers": ["Header-Name"]}}
    _route(s, "rt-append", ["/rt-append"], "request-transformer", config)
    appended = _applied(
        s, "/rt-append/x?a=1", lambda r: "client_id" in _json(r)["path"], headers={"Header-Name": "gone"}
    )
    assert _json(appended)["path"] == "/x?a=1&client_id=%20abc123"
    assert "header-name" not in _json(appended)["headers"]
    twice = s.gw.get("/rt-append/x?client_id=mine")
    assert _json(twice)["path"] == "/x?client_id=mine&client_id=%20abc123"
    # "Rewrite a path": the route's first capture group in the upstream path (a Kong 3 regex path: "~" prefix)
    _route(
        s,
        "rt-uri",
        ["~/users/(\\d+)"],
        "request-transformer",
        {"replace": {"uri": "/anything/$(uri_captures[1])"}},
    )
    rewritten = _applied(
        s, "/users/123?q=1", lambda r: r.status_code == 200 and "/anything" in _json(r)["path"]
    )
    assert _json(rewritten)["path"] == "/anything/123?q=1"


def test_request_transformer_order_and_method(setup: Setup) -> None:
    s = setup
    config = {
        "http_method": "GET",
        "remove": {"headers": ["X-Gone"], "querystring": ["drop"]},
        "rename": {"headers": ["X-Old:X-New"], "querystring": ["old:new"]},
        "replace": {"headers": ["X-Rep:replaced"], "querystring": ["rep:R"]},
        "add": {"headers": ["X-Add:added"], "querystring": ["add:A"]},
        "append": {"headers": ["X-App:two"], "querystring": ["app:2"]},
    }
    _route(s, "rt-all", ["/rt-all"], "request-transformer", config)
    headers = {"X-Gone": "1", "X-Old": "o", "X-Rep": "r", "X-App": "one",
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip

    def post(path: str) -> httpx.Response:
        return s.gw.http.post(path, headers=headers, content="form=1")

    wait_for(lambda: _json(post("/rt-all"))["method"] == "GET", 60, what="request-transformer on /rt-all")
    got = _json(post("/rt-all/p?drop=1&old=o1&rep=r1&add=keep&z=9"))
    # Kong: a form body's parameters join the query string when the method becomes GET; then the query edits
    assert got["method"] == "GET"
    assert got["path"] == "/p?add=keep&app=2&form=1&new=o1&rep=R&z=9"
    assert "x-gone" not in got["headers"] and "x-old" not in got["headers"]
    assert got["headers"]["x-new"] == "o" and got["headers"]["x-rep"] == "replaced"
    assert got["headers"]["x-add"] == "added"
    assert [v for k, v in got["all_headers"] if k == "x-app"] == ["one", "two"]
    # without the parameters and headers to rename or replace: nothing renamed or replaced, add and append apply
    bare = _json(s.gw.get("/rt-all/p"))
    assert bare["path"] == "/p?add=A&app=2"
    assert "x-new" not in bare["headers"] and "x-rep" not in bare["headers"]
    # templates: the request's headers and query arguments as the client sent them
    templated = {
        "add": {
            "headers": ["X-Copy:$(headers.x_src)-$(query_params.q)"],
            "querystring": ['q2:$(headers["x-src"])'],
        },
        "replace": {"uri": "/v2/$(query_params.id)"},
    }
    _route(s, "rt-tpl", ["/rt-tpl"], "request-transformer", templated)
    tpl = _applied(s, "/rt-tpl/x?id=42&q=7", lambda r: r.status_code == 200 and "/v2" in _json(r)["path"],
                   headers={"X-Src": "S"})  # fmt: skip
    assert _json(tpl)["path"] == "/v2/42?id=42&q=7&q2=S"
    assert _json(tpl)["headers"]["x-copy"] == "S-7"
    # an expression other than a lookup is refused with Kong's error body, nothing stored
    _refused(s, "request-transformer", {"add": {"headers": ["X-A:$(headers.a or 'b')"]}},
             {"config": {"add": {"headers": "template '$(headers.a or 'b')' is not supported yet"}}})  # fmt: skip
    _refused(s, "request-transformer", {"add": {"headers": ["X-A"]}},
             {"config": {"add": {"headers": ["invalid value: X-A"]}}})  # fmt: skip


def test_request_transformer_bodies(setup: Setup) -> None:
    s = setup
    config = {
        "remove": {"body": ["gone"]},
        "rename": {"body": ["old:new"]},
        "replace": {"body": ["rep:R"]},
        "add": {"body": ["add:A"]},
        "append": {"body": ["app:2"]},
    }
    _route(s, "rt-body", ["/rt-body"], "request-transformer", config)
    sent = {"gone": 1, "old": {"a": [1, 2]}, "rep": "x", "app": "1", "keep": None}
    got = _applied(s, "/rt-body", lambda r: "add" in _json(r)["body"], method="POST", json=sent)
    assert json.loads(_json(got)["body"]) == {"new": {"a": [1, 2]}, "rep": "R", "app": ["1", "2"], "add": "A", "keep": None}  # fmt: skip
    assert _json(got)["headers"]["content-length"] == str(len(_json(got)["body"]))
    form = s.gw.http.post("/rt-body", data={"gone": "1", "old": "o", "rep": "x", "add": "mine"})
    assert _json(form)["body"] == "add=mine&app=2&new=o&rep=R"
    parts = s.gw.http.post("/rt-body", files={"old": (None, "o"), "gone": (None, "g")})
    body = _json(parts)["body"]
    assert 'name="new"\r\n\r\no\r\n' in body and 'name="add"\r\n\r\nA\r\n' in body and "gone" not in body
    # a body that is not JSON is left as is, as Kong does
    plain = s.gw.http.post("/rt-body", content="not json", headers={"content-type": "application/json"})
    assert _json(plain)["body"] == "not json"


def test_response_transformer(setup: Setup) -> None:
    s = setup
    # "Add a new header"
    _route(
        s,
        "resp-add",
        ["/resp-add"],
        "response-transformer",
        {"add": {"headers": ["New-Header:Header Value"]}},
    )
    added = _applied(s, "/resp-add", lambda r: "new-header" in r.headers)
    assert added.headers["new-header"] == "Header Value"
    config = {
        "remove": {"headers": ["X-A"]},
        "rename": {"headers": ["X-B:X-C"]},
        "replace": {"headers": ["X-D:replaced"]},
        "append": {"headers": ["X-E:two"]},
    }
    _route(s, "resp-all", ["/resp-all"], "response-transformer", config)
    upstream = {"x-reply-x-a": "a", "x-reply-x-b": "b", "x-reply-x-d": "d", "x-reply-x-e": "one"}
    got = _applied(s, "/resp-all", lambda r: "x-c" in r.headers, headers=upstream)
    assert "x-a" not in got.headers and "x-b" not in got.headers
    assert got.headers["x-c"] == "b" and got.headers["x-d"] == "replaced"
    assert got.headers.get_list("x-e") == ["one", "two"]
    # "Remove a JSON property"
    _route(s, "resp-json", ["/resp-json"], "response-transformer", {"remove": {"json": ["custom_property"]}})
    product = json.dumps({"custom_property": "internal", "id": 7, "name": "widget"})
    stripped = _applied(
        s,
        "/resp-json",
        lambda r: "id" in r.json() and "custom_property" not in r.json(),
        headers={"x-body": product},
    )
    assert stripped.json() == {"id": 7, "name": "widget"}
    json_config = {"add": {"json": ["n:42", "flag:true", "s:text"], "json_types": ["number", "boolean"]},
                   "rename": {"json": ["path:where"]}, "remove": {"json": ["headers", "all_headers"]}}  # fmt: skip
    _route(s, "resp-json2", ["/resp-json2"], "response-transformer", json_config)
    typed = _applied(s, "/resp-json2", lambda r: "where" in r.json())
    assert typed.json() == {"method": "GET", "where": "/", "body": "", "n": 42, "flag": True, "s": "text"}
    # not JSON: passed unchanged
    text = s.gw.get("/resp-json2", headers={"x-content-type": "text/plain"})
    assert json.loads(text.text)["path"] == "/"


def test_ip_restriction_docs_examples(setup: Setup) -> None:
    s = setup
    # "Allow a range of IPs and deny an IP address": the client (127.0.0.1) is in neither list -> Kong's 403
    _route(
        s, "ip-range", ["/ip-range"], "ip-restriction", {"allow": ["203.0.113.0/24"], "deny": ["203.0.113.5"]}
    )
    denied = _applied(s, "/ip-range", lambda r: r.status_code == 403)
    assert denied.json() == {"message": "IP address not allowed: 127.0.0.1"}
    assert denied.headers["content-type"].startswith("application/json")
    # "Allow an IP and a range": not the client either
    _route(s, "ip-allow", ["/ip-allow"], "ip-restriction", {"allow": ["203.0.113.1", "192.0.2.0/24"]})
    assert _applied(s, "/ip-allow", lambda r: r.status_code == 403).status_code == 403
    # "Deny an IP range": the client is not in it; and allowed by a range of its own
    _route(s, "ip-deny", ["/ip-deny"], "ip-restriction", {"deny": ["198.51.100.0/24"]})
    _route(s, "ip-mine", ["/ip-mine"], "ip-restriction", {"allow": ["127.0.0.0/8"], "deny": ["10.0.0.0/8"]})
    # deny wins over allow; Kong's status and message (made last: once it answers, the others are applied too)
    config = {"allow": ["127.0.0.0/8", "::1"], "deny": ["127.0.0.1"], "status": 401, "message": "go away"}
    _route(s, "ip-both", ["/ip-both"], "ip-restriction", config)
    both = _applied(s, "/ip-both", lambda r: r.status_code == 401)
    assert both.json() == {"message": "go away"}
    assert _json(s.gw.get("/ip-deny/x"))["path"] == "/x"
    assert _json(s.gw.get("/ip-mine/y"))["path"] == "/y"
    # a denied range holding the client
    _route(s, "ip-deny-me", ["/ip-deny-me"], "ip-restriction", {"deny": ["127.0.0.0/8"]})
    mine = _applied(s, "/ip-deny-me", lambda r: r.status_code == 403)
    assert mine.json() == {"message": "IP address not allowed: 127.0.0.1"}
    _refused(s, "ip-restriction", {"allow": ["127.0.0.1/33"]},
             {"config": {"allow": ["invalid ip or cidr range: '127.0.0.1/33'"]}})  # fmt: skip
    entity = ["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]
    _refused(s, "ip-restriction", {}, {"config": {"@entity": entity}})


def test_proxy_cache_docs_example(setup: Setup) -> None:
    s = setup
    # "Cache responses to successful GET requests"
    config = {"response_code": [200], "request_method": ["GET"], "content_type": ["text/plain", "application/json"],
              "cache_ttl": 300, "strategy": "memory"}  # fmt: skip
    _route(s, "cached", ["/cached"], "proxy-cache", config)
    first = _applied(s, "/cached/a?y=2&x=1", lambda r: "x-cache-status" in r.headers)
    hits = len(_Echo.hits)
    # Kong's key (route, method, request line without query, sorted arguments), its SHA-256 as X-Cache-Key
    key = hashlib.sha256(b"cached|GET|GET /cached/a|x=1:y=2|").hexdigest()
    assert first.headers["x-cache-key"] == key
    # the upstream says no-store: Kong, without cache_control, caches anyway
    again = s.gw.get("/cached/a?x=1&y=2", headers={"x-reply-cache-control": "no-store"})
    assert again.headers["x-cache-status"] == "Hit" and again.headers["x-cache-key"] == key
    assert len(_Echo.hits) == hits and "age" in again.headers
    assert again.json() == first.json() and again.json()["path"] == "/a?y=2&x=1"
    # a method not in request_method, a status not in response_code, a content type not in content_type: Bypass
    assert s.gw.http.post("/cached/a").headers["x-cache-status"] == "Bypass"
    for headers in ({"x-status": "201"}, {"x-content-type": "text/html"}):
        assert s.gw.get("/cached/b", headers=headers).headers["x-cache-status"] == "Bypass"
        assert s.gw.get("/cached/b", headers=headers).headers["x-cache-status"] == "Bypass"
    # a client's Cache-Control is ignored without cache_control
    fresh = s.gw.get("/cached/c", headers={"cache-control": "no-cache"})
    assert fresh.headers["x-cache-status"] == "Miss"
    assert s.gw.get("/cached/c", headers={"cache-control": "no-cache"}).headers["x-cache-status"] == "Hit"
    # with cache_control: the upstream's directives are honoured
    _route(s, "cc", ["/cc"], "proxy-cache", {"strategy": "memory", "cache_control": True})
    _applied(
        s, "/cc/a", lambda r: "x-cache-status" in r.headers, headers={"x-reply-cache-control": "max-age=60"}
    )
    assert s.gw.get("/cc/a").headers["x-cache-status"] == "Hit"
    assert s.gw.get("/cc/private", headers={"x-reply-cache-control": "private, max-age=60"}).headers["x-cache-status"] == "Bypass"  # fmt: skip
    assert s.gw.get("/cc/none").headers["x-cache-status"] == "Bypass"
    # the key: only vary_query_params, and the vary_headers; diagnostic headers as response_headers says
    vary = {"strategy": "memory", "vary_headers": ["X-Tenant"], "vary_query_params": ["page"],
            "response_headers": {"age": False, "X-Cache-Key": False}}  # fmt: skip
    _route(s, "cvary", ["/cvary"], "proxy-cache", vary)
    tenant_a = {"X-Tenant": "a"}
    _applied(s, "/cvary/a?page=1&junk=1", lambda r: "x-cache-status" in r.headers, headers=tenant_a)
    hit = s.gw.get("/cvary/a?junk=2&page=1", headers=tenant_a)
    assert hit.headers["x-cache-status"] == "Hit" and _json(hit)["path"] == "/a?page=1&junk=1"
    assert "age" not in hit.headers and "x-cache-key" not in hit.headers
    assert s.gw.get("/cvary/a?page=1", headers={"X-Tenant": "b"}).headers["x-cache-status"] == "Miss"
    assert s.gw.get("/cvary/a?page=2", headers=tenant_a).headers["x-cache-status"] == "Miss"
    debug = s.gw.get("/cvary/a?page=1", headers={**tenant_a, "Kong-Debug": "1"})
    key = hashlib.sha256(b"cvary|GET|GET /cvary/a|page=1|X-Tenant=a").hexdigest()
    assert debug.headers["x-cache-key"] == key and "age" in debug.headers
    _refused(s, "proxy-cache", {"cache_ttl": 300}, {"config": {"strategy": "required field missing"}})
