"""Input refused at the door: the loader (aliases, nesting, size, plain JSON), names, tags, labels, addresses,
ports, durations, the request body limit and the agent's ``--dataplane-file``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from isthmus.catalog import default_registry
from isthmus.cp.api.limits import BodyLimitMiddleware
from isthmus.dp.agent import AgentError, load_dataplane_file, parse_dataplane
from isthmus.resources.common import check_cidr, mesh_name_problem, name_problem
from isthmus.resources.dataplane import MAX_INBOUNDS, MAX_OUTBOUNDS
from isthmus.resources.duration import duration_ms, parse_duration
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import MAX_DEPTH, MAX_DOCUMENT_BYTES, load_body, load_yaml_documents
from isthmus.resources.registry import load_documents, parse_document

DATAPLANE = """
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 20001
    servicePort: 8001
    tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1.2_rc-3, zone: 'eu:west'}
"""


def refused(text: str | bytes) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as caught:
        load_body(text) if isinstance(text, bytes) else load_yaml_documents(text)
    return [(e.field, e.reason) for e in caught.value.errors]


def errors_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as caught:
        parse_document(doc, default_registry())
    return [(e.field, e.reason) for e in caught.value.errors]


def dataplane(**changes: Any) -> dict[str, Any]:
    (doc,) = load_documents(DATAPLANE)
    inbound = doc["networking"]["inbound"][0]
    for key, value in changes.items():
        if key.startswith("inbound_"):
            inbound[key.removeprefix("inbound_")] = value
        else:
            doc["networking"][key] = value
    return doc  # type: ignore[no-any-return]


def nested(depth: int, *, json_text: bool = True) -> str:
    if json_text:
        return '{"type": "Mesh", "name": "m", "logging": ' + "[" * depth + "]" * depth + "}"
    return "type: Mesh\nname: m\nlogging: " + "[" * depth + "]" * depth + "\n"


# -- loading ------------------------------------------------------------------------------------------------------
def test_a_valid_dataplane_still_loads() -> None:
    (doc,) = load_documents(DATAPLANE)
    res = parse_document(doc, default_registry())
    assert res.name == "web-1"


def test_yaml_aliases_are_refused_naming_the_line() -> None:
    text = "type: Mesh\nname: m\nlogging: &log {a: 1}\ntracing: *log\n"
    ((field, reason),) = refused(text)
    assert field == ""
    assert "anchors are not allowed" in reason and "line 3" in reason
    ((_, reason),) = refused("type: Mesh\nname: m\nlogging: *nowhere\n")
    assert "YAML aliases are not allowed" in reason and "line 3" in reason


def test_a_billion_laughs_is_refused_before_anything_expands() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "type: Mesh\nname: m\nlogging:\n" + "\n".join("  " + line for line in lines) + "\n"
    ((_, reason),) = refused(bomb)
    assert "not allowed" in reason
    with pytest.raises(ResourceValidationError, match="not allowed"):
        load_body(bomb.encode())


@pytest.mark.parametrize("json_text", [True, False], ids=["json", "yaml"])
def test_nesting_up_to_the_limit_loads_and_beyond_is_a_field_error(json_text: bool) -> None:
    # the document itself is one level, logging's lists the rest
    (doc,) = load_yaml_documents(nested(MAX_DEPTH - 1, json_text=json_text))
    assert doc["name"] == "m"
    assert load_body(nested(MAX_DEPTH - 1, json_text=json_text).encode())["name"] == "m"
    for depth in (MAX_DEPTH, 5_000, 200_000):
        with pytest.raises(ResourceValidationError) as caught:
            load_body(nested(depth, json_text=json_text).encode())
        (error,) = caught.value.errors
        assert "nested" in error.reason or "nesting" in error.reason, error


def test_deep_documents_built_in_memory_are_refused_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = {"a": deep}
    errors = errors_of({"type": "Mesh", "name": "m", "logging": deep})
    assert errors and errors[0][1].startswith("nested more than 400 levels deep")
    assert errors[0][0].startswith("logging.a.a")


def test_free_form_maps_are_bounded_more_tightly() -> None:
    deep: Any = 1
    for _ in range(70):
        deep = {"a": deep}
    assert errors_of({"type": "Mesh", "name": "m", "logging": deep}) == [
        ("logging", "nested more than 64 levels deep")
    ]


def test_only_plain_json_values() -> None:
    (doc,) = load_yaml_documents("date: 2024-01-02\nstamp: 2001-12-14t21:59:43.10-05:00\nflag: yes\n")
    assert doc == {"date": "2024-01-02", "stamp": "2001-12-14t21:59:43.10-05:00", "flag": True}
    assert refused("yes: 1\n") == [("", "map key True must be a string")]
    assert refused("a: !!binary aGVsbG8=\n") == [("a", "a bytes value is not plain JSON data")]
    assert refused("a: {b: .inf}\n") == [("a.b", "inf is not a finite number")]
    assert refused("a: {1: x}\n") == [("a", "map key 1 must be a string")]
    ((_, reason),) = refused("a: !!python/object:os.system x\n")
    assert "could not determine a constructor" in reason
    ((_, reason),) = refused(b'{"a": NaN}')
    assert "NaN is not a JSON number" in reason
    ((_, reason),) = refused(b'{"a": -Infinity}')
    assert "-Infinity" in reason
    assert errors_of({"type": "Mesh", "name": "m", "logging": {"x": float("nan")}}) == [
        ("logging.x", "nan is not a finite number")
    ]


def test_size_limit() -> None:
    filler = "# " + "x" * 100 + "\n"
    text = DATAPLANE + filler * (MAX_DOCUMENT_BYTES // len(filler))
    assert len(text.encode()) > MAX_DOCUMENT_BYTES
    ((field, reason),) = refused(text)
    assert field == "" and "limit is 1048576 bytes" in reason
    ((_, reason),) = refused(text.encode())
    assert reason.startswith("request body is")


def test_malformed_bodies() -> None:
    ((_, reason),) = refused(b"\xff\xfe not utf-8")
    assert "not UTF-8" in reason
    ((_, reason),) = refused(b"type: Mesh\n---\ntype: Mesh\nname: b\n")
    assert "expected one document" in reason
    ((_, reason),) = refused(b"type: Mesh\nname: [oops\n")
    assert reason.startswith("malformed YAML at line")


# -- names, tags, labels ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "web-1", "web.eu-1", "0", "a" * 253, "backend.kuma-demo.svc.8080"])
def test_kuma_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "Web", "web_1", "-a", "a-", "a..b", ".a", "a b", "a/b", "a" * 254, "é"])
def test_names_kuma_refuses(name: str) -> None:
    assert name_problem(name) is not None


@pytest.mark.parametrize(
    ("name", "ok"), [("default", True), ("prod-eu", True), ("prod.eu", False), ("A", False)]
)
def test_mesh_names_have_no_dot(name: str, ok: bool) -> None:
    assert (mesh_name_problem(name) is None) is ok


def test_mesh_names_with_a_dot_cannot_collide_into_one_node_id() -> None:
    # mesh "a" + dataplane "b.c" is fine; mesh "a.b" + dataplane "c" would have the same node id "a.b.c"
    assert errors_of({"type": "Mesh", "name": "a.b"})[0][0] == "name"
    doc = dataplane()
    doc["mesh"] = "a.b"
    assert errors_of(doc)[0][0] == "mesh"
    doc = dataplane()
    doc["mesh"], doc["name"] = "a", "b.c"
    assert parse_document(doc, default_registry()).name == "b.c"


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("kuma.io/zone", "eu-west_1:a.b", True),
        ("app.kubernetes.io/name", "web", True),
        ("owner", "John Smith", False),
        ("owner", "", False),
        ("", "x", False),
        ("a b", "x", False),
        ("version", "v1/beta", False),
        ("version", "v1,v2", False),
        ("version", "x" * 254, False),
        ("emoji", "\U0001f600", False),
    ],
)
def test_tag_character_sets(key: str, value: str, ok: bool) -> None:
    doc = dataplane(inbound_tags={"kuma.io/service": "web", key: value})
    if ok:
        parse_document(doc, default_registry())
    else:
        assert [f for f, _ in errors_of(doc)] == ["networking.inbound[0].tags"]


def test_owner_john_smith_is_refused_naming_the_tags() -> None:
    doc = dataplane(inbound_tags={"kuma.io/service": "web", "owner": "John Smith"})
    ((field, reason),) = errors_of(doc)
    assert field == "networking.inbound[0].tags"
    assert "'John Smith'" in reason


def test_labels() -> None:
    (doc,) = load_documents(DATAPLANE)
    doc["labels"] = {"kuma.io/origin": "zone", "team": ""}
    parse_document(doc, default_registry())
    doc["labels"] = {"team": "a b"}
    assert [f for f, _ in errors_of(doc)] == ["labels"]
    doc["labels"] = {"team": 1}
    assert errors_of(doc) == [("labels", "must be a map of string to string")]


# -- addresses and ports ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["10.0.0.1", "::1", "2001:db8::1", "0.0.0.0"])
def test_addresses(address: str) -> None:
    parse_document(dataplane(address=address), default_registry())


@pytest.mark.parametrize("address", ["10.0.0.256", "web", "10.0.0.0/8", "fe80::1%eth0", "", " 10.0.0.1"])
def test_bad_addresses(address: str) -> None:
    assert [f for f, _ in errors_of(dataplane(address=address))] == ["networking.address"]


@pytest.mark.parametrize("port", [0, -1, 65536, 10**40, "80", True, 80.5])
def test_bad_ports(port: Any) -> None:
    assert [f for f, _ in errors_of(dataplane(inbound_port=port))] == ["networking.inbound[0].port"]


def test_inbound_and_outbound_counts_are_bounded() -> None:
    """One Dataplane (which a data-plane token may write) cannot make the control plane translate thousands of
    listeners: 256 inbounds and 1,024 outbounds at most, refused naming the list before its items are read."""
    inbounds = [{"port": 10000 + i, "tags": {"kuma.io/service": f"web-{i}"}} for i in range(MAX_INBOUNDS)]
    outbounds = [{"port": 30000 + i, "tags": {"kuma.io/service": f"db-{i}"}} for i in range(MAX_OUTBOUNDS)]
    parse_document(
        dataplane(inbound=inbounds, outbound=outbounds), default_registry()
    )  # the limits themselves
    too_many = dataplane(
        inbound=[*inbounds, {"port": 9999, "tags": {"kuma.io/service": "x"}}],
        outbound=[*outbounds, {"port": "not even a port"}],
    )
    assert errors_of(too_many) == [
        ("networking.inbound", "at most 256 inbounds are allowed in one Dataplane, got 257"),
        ("networking.outbound", "at most 1024 outbounds are allowed in one Dataplane, got 1025"),
    ]


def test_cidr_check() -> None:
    assert check_cidr("10.0.0.0/8") == "10.0.0.0/8"
    assert check_cidr("2001:db8::/32") == "2001:db8::/32"
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/-1", "x/8", ""):
        with pytest.raises(ValueError, match="not a valid CIDR"):
            check_cidr(bad)


# -- durations ----------------------------------------------------------------------------------------------------
def test_durations() -> None:
    assert duration_ms("0") == duration_ms("0s") == duration_ms("0h0m") == duration_ms("0.0s") == 0
    assert duration_ms("1m30s") == 90_000
    assert duration_ms("1us") == 1  # rounded up to the millisecond Envoy can express
    assert parse_duration("87600h").days == 3650
    for bad, why in [
        ("87601h", "at most 87600h"),
        ("9000y", "at most 87600h"),
        ("-1s", "positive"),
        ("9" * 40 + "y", "too long"),
        ("1" * 100 + "s", "longer than 64"),
        ("1e9s", "unknown unit"),
        ("soon", "expected a number"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_duration(bad)


def test_zero_detection_does_not_backtrack() -> None:
    # a pattern with nested repetition used to take exponential time on input like this
    with pytest.raises(ValueError):
        parse_duration("0" * 60 + "!")


def test_certificate_lifetime_9000y_is_refused_naming_the_field() -> None:
    doc = {
        "type": "Mesh",
        "name": "m",
        "mtls": {
            "enabledBackend": "ca-1",
            "backends": [
                {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "9000y"}}}
            ],
        },
    }
    ((field, reason),) = errors_of(doc)
    assert field == "mtls.backends[0].dpCert.rotation.expiration"
    assert "9000y" in reason


# -- the request body limit ---------------------------------------------------------------------------------------
async def _call(
    limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, bytes | None]:
    """Drive the middleware over the ASGI protocol; returns (status, response body, body the app saw)."""
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> Any:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": "/meshes/m", "headers": headers}
    await BodyLimitMiddleware(app, max_body_bytes=limit)(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body, seen[0] if seen else None


def test_body_limit_by_content_length() -> None:
    status, body, seen = asyncio.run(_call(10, [b"x" * 11], [(b"content-length", b"11")]))
    assert status == 413 and seen is None
    problem = json.loads(body)
    assert problem["status"] == 413 and "limit is 10 bytes" in problem["detail"]


def test_body_limit_counts_streamed_bytes() -> None:
    status, _, seen = asyncio.run(_call(10, [b"x" * 6, b"x" * 6], []))
    assert status == 413 and seen is None
    status, _, seen = asyncio.run(_call(10, [b"x" * 5, b"x" * 5], []))
    assert status == 200 and seen == b"x" * 10


# -- the agent's --dataplane-file ---------------------------------------------------------------------------------
def test_agent_dataplane_file_rules(tmp_path: Path) -> None:
    assert parse_dataplane(DATAPLANE)["name"] == "web-1"
    with pytest.raises(AgentError, match="YAML anchors are not allowed"):
        parse_dataplane(DATAPLANE + "metrics: &m {a: 1}\nprobes: *m\n", source="--dataplane")
    with pytest.raises(AgentError, match="nested more than 400 levels deep"):
        parse_dataplane(DATAPLANE + "metrics: " + "[" * 500 + "]" * 500 + "\n")
    big = tmp_path / "big.yaml"
    big.write_text(DATAPLANE + "#" * MAX_DOCUMENT_BYTES)
    with pytest.raises(AgentError, match=r"the limit is 1048576 bytes \(1 MiB\)"):
        load_dataplane_file(big)
