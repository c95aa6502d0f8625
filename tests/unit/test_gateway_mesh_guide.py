"""docs/guides/gateway-in-mesh.md does what it says: its ``<!-- expect: ... -->`` checks (the language of
tests/unit/test_docs_examples.py) hold when the page is followed step by step.

Each resource block is applied with every resource block before it on the page, into test_docs_examples's base
mesh. Gateway proxies are built as the control plane builds them: a gateway Dataplane without ``networking.outbound``
entries is run with ``--proxy-listen 127.0.0.1:8000`` (the labels ``isthmus dp run`` sets) and its mesh legs are the
mesh services the page's Kong files name (``<service>.mesh``); one with outbounds is in delegated mode. Kong files must load and validate.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.context.mesh_context import build_mesh_context
from isthmus.gateway import declarative, mesh_leg
from isthmus.gateway.store import Workspace
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import ProxyIR
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate
from tests.unit.test_docs_examples import (
    BASE,
    DOCS,
    REG,
    XDS_NAMES,
    Applied,
    Example,
    _cert,
    _examples,
    evaluate,
    parse_expectation,
)

PAGE = DOCS / "guides" / "gateway-in-mesh.md"
EXAMPLES = _examples(iter([PAGE]))
LISTEN = {"isthmus.io/gateway-workspace": "default", "isthmus.io/gateway-listen": "127.0.0.1:8000"}


def _is_kong(example: Example) -> bool:
    return "_format_version" in example.block


def _legs() -> frozenset[str]:
    out: set[str] = set()
    for ex in EXAMPLES:
        if _is_kong(ex):
            ws = Workspace("default")
            out |= mesh_leg.mesh_services(declarative.desired(ws, declarative.load(ex.block)))
    return frozenset(out)


def _apply(blocks: list[str]) -> Applied:
    docs = []
    for text in blocks:
        for doc in load_documents(text):
            net = doc.get("networking") or {}
            if doc.get("type") == "Dataplane" and net.get("gateway") and not net.get("outbound"):
                doc = {**doc, "labels": {**(doc.get("labels") or {}), **LISTEN}}
            docs.append(parse_document(doc, REG))
    base = [parse_document(d, REG) for d in load_documents(BASE.format(mesh="default"))]
    dataplanes = {r.name: r for r in base if r.type.kind == "Dataplane"}
    dataplanes.update({r.name: r for r in docs if r.type.kind == "Dataplane"})
    policies = [r for r in docs if r.type.is_policy]
    ctx = build_mesh_context(base[0], list(dataplanes.values()), policies, _cert("ca.pem"))
    identity = Identity(_cert("cert.pem"), _cert("key.pem"))
    legs = _legs()
    irs: dict[str, ProxyIR] = {}
    xds: dict[str, dict[str, Any]] = {}
    for name, dp in dataplanes.items():
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        serves_kong = spec.networking.gateway is not None and "isthmus.io/gateway-listen" in dp.labels
        ir = build_proxy_ir(ctx, name, identity, legs if serves_kong else frozenset())
        messages = translate(ir)
        assert Snapshot.build(messages).consistency_errors() == [], name
        irs[name] = ir
        xds[name] = {
            short: json.loads(
                json.dumps(
                    [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages[url]]
                )
            )
            for short, url in XDS_NAMES.items()
        }
    return Applied(irs, xds, {n: True for n in dataplanes})


def _steps() -> list[Any]:
    out = []
    before: list[str] = []
    for ex in EXAMPLES:
        out.append(pytest.param(ex, list(before), id=ex.where.split(" ")[0]))
        if not _is_kong(ex):
            before.append(ex.block)
    return out


def test_every_yaml_example_of_the_guide_is_described() -> None:
    assert len(EXAMPLES) >= 8
    for ex in EXAMPLES:
        expectation = parse_expectation(ex.comment)
        assert (expectation.kind == "fragment") is _is_kong(ex), ex.where


@pytest.mark.parametrize(("example", "before"), _steps())
def test_guide_step_has_its_documented_effect(example: Example, before: list[str]) -> None:
    if _is_kong(example):
        declarative.desired(Workspace("default"), declarative.load(example.block))  # Kong's checks pass
        return
    applied = _apply([*before, example.block])
    for check in parse_expectation(example.comment).checks:
        evaluate(check, applied)
