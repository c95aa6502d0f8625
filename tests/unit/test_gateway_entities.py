"""Kong's entities: defaults, the ``url`` shorthand and validation errors in Kong's shape."""

from __future__ import annotations

from typing import Any

import pytest

from isthmus.gateway import entities as e
from isthmus.gateway.errors import KongError


def violation(model: type[e.Entity], data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(KongError) as info:
        e.validate(model, data)
    assert info.value.status == 400
    body = info.value.body()
    assert body["code"] == 2 and body["name"] == "schema violation"
    return body


def test_service_defaults_and_url_shorthand() -> None:
    service = e.validate(e.Service, {"name": "api", "url": "https://example.com/v1"}).dump()
    assert (service["protocol"], service["host"], service["port"], service["path"]) == ("https", "example.com", 443, "/v1")  # fmt: skip
    assert service["retries"] == 5 and service["connect_timeout"] == 60000 and service["enabled"] is True
    assert "url" not in service and e.is_uuid(service["id"])
    plain = e.validate(e.Service, {"url": "http://upstream:8080"}).dump()
    assert (plain["protocol"], plain["port"], plain["path"]) == ("http", 8080, None)


def test_service_errors_name_every_field_as_kong() -> None:
    body = violation(e.Service, {"path": "x"})
    assert body["fields"] == {"host": "required field missing", "path": "should start with: /"}
    assert body["message"] == "2 schema violations (host: required field missing; path: should start with: /)"
    assert violation(e.Service, {"host": "a", "foo": 1})["message"] == "schema violation (foo: unknown field)"
    assert violation(e.Service, {"host": "a", "retries": 40000})["fields"] == {"retries": "value should be between 0 and 32767"}  # fmt: skip
    assert violation(e.Service, {"host": "a", "name": "bad name"})["fields"]["name"].startswith("invalid value 'bad name'")  # fmt: skip
    tcp = violation(e.Service, {"host": "a", "protocol": "tcp", "path": "/x"})["fields"]
    assert tcp == {"path": "value must be null", "protocol": "'tcp' is not supported yet"}


def test_protocols_the_gateway_does_not_serve_are_refused_not_ignored() -> None:
    for protocol in ("tcp", "tls", "tls_passthrough", "udp", "ws", "wss"):
        assert violation(e.Service, {"host": "a", "protocol": protocol})["fields"] == {
            "protocol": f"'{protocol}' is not supported yet"
        }
    stream = violation(e.Route, {"protocols": ["tcp", "tls"], "destinations": [{"port": 80}]})
    assert stream["fields"] == {"protocols": "'tcp', 'tls' not supported yet"}
    grpc = e.validate(
        e.Route, {"protocols": ["grpc", "grpcs"], "paths": ["/hello.Greeter"], "strip_path": False}
    )
    assert grpc.dump()["protocols"] == ["grpc", "grpcs"]


def test_route_defaults() -> None:
    route = e.validate(e.Route, {"paths": ["/a"]}).dump()
    assert route["protocols"] == ["http", "https"]
    assert route["strip_path"] is True and route["preserve_host"] is False
    assert route["regex_priority"] == 0 and route["path_handling"] == "v0"
    assert route["https_redirect_status_code"] == 426 and route["service"] is None


def test_route_needs_a_matching_field() -> None:
    body = violation(e.Route, {})
    assert body["fields"] == {"@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when 'protocols' is 'https'"]}  # fmt: skip
    assert body["message"].startswith("schema violation (must set one of")
    http_only = violation(e.Route, {"protocols": ["http"]})
    assert "when 'protocols' is 'http'" in http_only["fields"]["@entity"][0]


def test_route_paths_hosts_methods_headers() -> None:
    body = violation(e.Route, {"paths": ["x", "/ok", "~/(unclosed"]})
    assert body["fields"]["paths"][0] == "should start with: / (fixed path) or ~/ (regex path)"
    assert body["fields"]["paths"][1] is None
    assert body["fields"]["paths"][2].startswith("invalid regex: '/(unclosed'")
    assert e.validate(e.Route, {"paths": ["~/status/\\d+"]}).paths == ["~/status/\\d+"]
    assert e.validate(e.Route, {"hosts": ["*.example.com", "example.*", "Example.org:8000"]}).hosts == ["*.example.com", "example.*", "example.org:8000"]  # fmt: skip
    assert violation(e.Route, {"hosts": ["a.*.com"]})["fields"]["hosts"] == ["invalid wildcard: must be placed at leftmost or rightmost label"]  # fmt: skip
    assert violation(e.Route, {"hosts": ["*.a.*"]})["fields"]["hosts"] == ["invalid wildcard: must have at most one wildcard"]  # fmt: skip
    assert violation(e.Route, {"methods": ["get"]})["fields"]["methods"] == ["invalid value: get"]
    assert (
        violation(e.Route, {"headers": {"Host": ["a"]}})["fields"]["headers"]
        == "cannot contain 'host' header"
    )
    assert violation(e.Route, {"paths": ["/a"], "https_redirect_status_code": 200})["fields"] == {"https_redirect_status_code": "expected one of: 426, 301, 302, 307, 308"}  # fmt: skip
    assert "snis" in violation(e.Route, {"protocols": ["http"], "paths": ["/"], "snis": ["a.com"]})["fields"]


def test_upstream_target_consumer_plugin() -> None:
    upstream = e.validate(e.Upstream, {"name": "backend", "healthchecks": {"active": {"healthy": {"interval": 5}}}}).dump()  # fmt: skip
    assert upstream["algorithm"] == "round-robin" and upstream["slots"] == 10000
    assert upstream["healthchecks"]["active"]["healthy"] == {"interval": 5, "http_statuses": [200, 302], "successes": 0}  # fmt: skip
    assert upstream["healthchecks"]["passive"]["unhealthy"]["http_statuses"] == [429, 500, 503]
    hashed = e.validate(e.Upstream, {"name": "b", "hash_on": "header", "hash_on_header": "x-user"})
    assert hashed.algorithm == "consistent-hashing"
    ref = {"id": e.new_id()}
    assert e.validate(e.Target, {"upstream": ref, "target": "10.0.0.1"}).target == "10.0.0.1:8000"
    assert e.validate(e.Target, {"upstream": ref, "target": "10.0.0.1:80"}).weight == 100
    assert violation(e.Consumer, {})["fields"] == {"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]}  # fmt: skip
    plugin = e.validate(e.Plugin, {"name": "correlation-id"}).dump()
    assert plugin["enabled"] is True and plugin["protocols"] == ["grpc", "grpcs", "http", "https"]
    assert violation(e.Plugin, {"name": "nope"})["fields"] == {"name": "plugin 'nope' not enabled; add it to the 'plugins' configuration property"}  # fmt: skip
    huge = {"name": "cors", "config": {"origins": ["x" * 70_000]}}
    assert violation(e.Plugin, huge)["fields"]["config"].startswith("is larger than")
    key = e.validate(e.KeyAuthCredential, {"consumer": ref}).dump()
    assert len(key["key"]) == 32
    assert "rsa_public_key" in violation(e.JwtCredential, {"consumer": ref, "algorithm": "RS256"})["fields"]
