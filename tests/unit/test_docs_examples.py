"""Every resource example in the docs applies and translates: each YAML block with a ``type`` parses and
validates, and each policy example, put in a small mesh, produces Envoy configuration for every proxy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.resources.registry import Resource, load_documents, parse_document
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)

MESH = """
type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 20001
    servicePort: 8001
    tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - port: 20002
    servicePort: 8002
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 127.0.0.3
  inbound:
  - port: 20002
    servicePort: 8002
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 127.0.0.4
  inbound:
  - port: 20003
    servicePort: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp}
"""


def _examples() -> list[tuple[str, str]]:
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, block in enumerate(BLOCK.findall(page.read_text())):
            if re.search(r"^type: ", block, re.M):
                out.append((f"{page.relative_to(DOCS)}#{i}", block))
    return out


@pytest.mark.parametrize(("where", "block"), _examples(), ids=[w for w, _ in _examples()])
def test_doc_example_applies_and_translates(where: str, block: str) -> None:
    registry = default_registry()
    docs = [parse_document(doc, registry) for doc in load_documents(block)]
    policies = [r for r in docs if r.type.is_policy]
    if not policies:
        return  # a Mesh or Dataplane example: validating it is the test
    base = [parse_document(doc, registry) for doc in load_documents(MESH)]
    mesh: Resource = base[0]
    dataplanes = [r for r in base if r.type.kind == "Dataplane"]
    ctx = build_mesh_context(mesh, dataplanes, [r for r in docs if r.type.is_policy and r.mesh == "default"])
    for dp in dataplanes:
        snapshot = Snapshot.build(translate(build_proxy_ir(ctx, dp.name, None)))
        assert snapshot.consistency_errors() == [], (where, dp.name)
