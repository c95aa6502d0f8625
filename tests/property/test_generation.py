"""Whatever passes validation never breaks generation.

For every resource kind, documents drawn from its schema are validated; each one accepted is put in a mesh and
every proxy of that mesh is generated (certificate, IR, xDS, snapshot). The only failures allowed are those a
MeshProxyPatch causes on a proxy it does not fit, which the reconciler contains. On failure, Hypothesis prints
the minimal example as YAML documents ready for ``isthmus apply``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note
from hypothesis import strategies as st

from tests.property.pipeline import Parsed, generate, parse_all
from tests.property.strategies import document, mesh_documents, profile, public_kinds

# A mesh with mTLS on and four proxies of three services (the docs' example mesh), for one drawn resource.
BASE = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends: [{name: ca-1, type: builtin}]
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 20001, servicePort: 8001, tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}}
  outbound:
  - {port: 10001, tags: {kuma.io/service: backend}}
  - {port: 10002, tags: {kuma.io/service: db}}
  - {port: 10003, tags: {kuma.io/service: api}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - {port: 20002, servicePort: 8002, tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}}
  outbound:
  - {port: 10002, tags: {kuma.io/service: db}}
---
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 127.0.0.3
  inbound:
  - {port: 20002, servicePort: 8002, tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 127.0.0.4
  inbound:
  - {port: 20003, servicePort: 5432, tags: {kuma.io/service: db, kuma.io/protocol: tcp}}
---
type: MeshHTTPRoute
mesh: default
name: route-1
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      default:
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
"""
BASE_DOCS: list[dict[str, Any]] = list(yaml.safe_load_all(BASE))


def _as_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _with(docs: list[dict[str, Any]], drawn: dict[str, Any]) -> list[dict[str, Any]]:
    """The base mesh with ``drawn`` added, or replacing the base resource of the same kind and name; a drawn
    Mesh replaces the base Mesh (its name becomes the name of every resource's mesh)."""
    if drawn.get("type") == "Mesh":
        mesh = drawn.get("name")
        rest = [{**d, "mesh": mesh} for d in docs if d["type"] != "Mesh"]
        return [drawn, *rest]
    kept = [d for d in docs if (d["type"], d["name"]) != (drawn.get("type"), drawn.get("name"))]
    return [*kept, drawn]


def _check(parsed: Parsed, docs: list[dict[str, Any]]) -> None:
    assert parsed.mesh is not None
    note(_as_yaml(docs))
    outcomes = generate(parsed.mesh, parsed.dataplanes, parsed.policies)
    assert {o.name for o in outcomes} == {d.name for d in parsed.dataplanes}
    for o in outcomes:
        if o.error is None:
            assert o.resources is not None


@pytest.mark.parametrize("kind", public_kinds())
def test_every_accepted_resource_generates(kind: str) -> None:
    """One drawn resource of ``kind`` in the base mesh (most drawn documents are valid; the invalid ones are
    skipped, and Hypothesis fails the test if too few are valid for it to run)."""

    # kinds with cross-field rules (a HostnameGenerator selects exactly one kind, a MeshExternalService needs
    # endpoints unless an extension) draw many refused documents: those are skipped, and Hypothesis still fails
    # the test (Unsatisfiable) when none is accepted
    @profile(max_examples=80, suppress_health_check=[HealthCheck.filter_too_much])
    @given(drawn=document(kind))
    def run(drawn: dict[str, Any]) -> None:
        docs = _with(BASE_DOCS, drawn)
        parsed = parse_all(docs)
        assume(not any(doc is drawn for doc, _ in parsed.refused))
        assume(parsed.mesh is not None and parsed.dataplanes)
        _check(parsed, docs)

    run()


@profile(max_examples=200)
@given(docs=mesh_documents())
def test_any_accepted_mesh_generates(docs: list[dict[str, Any]]) -> None:
    """A whole drawn mesh: the Mesh, its Dataplanes and policies of every kind, interacting."""
    parsed = parse_all(docs)
    assume(parsed.mesh is not None and parsed.dataplanes)
    _check(parsed, docs)


@profile(max_examples=30)
@given(st.data())
def test_refusals_name_a_field(data: st.DataObject) -> None:
    """Every refused document says which field is wrong and why (the other side of the same coin)."""
    kind = data.draw(st.sampled_from(public_kinds()))
    drawn = data.draw(document(kind))
    parsed = parse_all([drawn])
    for _, exc in parsed.refused:
        for err in exc.errors:
            assert err.reason, f"an error without a reason: {err}"
