"""MeshProxyPatch ``jsonPatches``: every failure is a PatchError naming the operation and its path, at apply
time when the failure does not depend on the resource, at generation otherwise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from isthmus.catalog import default_registry
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import parse_document
from isthmus.xds import types
from isthmus.xds.translate.patches import PatchError, apply_patches


def _patch_doc(ops: list[dict[str, Any]]) -> dict[str, Any]:
    mod = {"cluster": {"operation": "Patch", "jsonPatches": ops}}
    return {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "p",
        "spec": {"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [mod]}},
    }


def _apply(ops: list[dict[str, Any]]) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name="backend")
    cluster.load_assignment.cluster_name = "backend"
    cluster.load_assignment.endpoints.add()
    mod = {"cluster": {"operation": "Patch", "jsonPatches": ops}}
    out = apply_patches({types.CLUSTER: [cluster]}, [json.dumps(mod)])
    result: cluster_pb2.Cluster = out[types.CLUSTER][0]
    return result


THROUGH_A_NUMBER = [
    {"op": "add", "path": "/api", "value": 179},
    {"op": "add", "path": "/api/v1", "value": 179},
]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (THROUGH_A_NUMBER, "jsonPatches add: /api/v1: /api is 179, not an object or a list"),
        ([{"op": "add", "path": "/name/x", "value": 1}], 'jsonPatches add: /name/x: /name is "backend"'),
        (
            [{"op": "add", "path": "/loadAssignment/endpoints/abc", "value": 1}],
            "jsonPatches add: /loadAssignment/endpoints/abc: 'abc' is not an index of the list",
        ),
        (
            [{"op": "add", "path": "/loadAssignment/endpoints/5/x", "value": 1}],
            "'5' is not an index of the list at /loadAssignment/endpoints (1 items)",
        ),
        (
            [{"op": "replace", "path": "/loadAssignment/endpoints/-", "value": {}}],
            "'-' is not an index of the list",
        ),
        ([{"op": "remove", "path": "/loadAssignment/endpoints/1"}], "is not an index of the list"),
        ([{"op": "remove", "path": "/connectTimeout"}], "jsonPatches remove: /connectTimeout does not exist"),
        ([{"op": "move", "path": "/name"}], "jsonPatches op 'move' is not supported"),
        ([{"op": "add", "path": "/connectTimeout", "value": "soon"}], "produce an invalid Cluster"),
    ],
)
def test_every_failure_is_a_patch_error(ops: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(PatchError) as info:
        _apply(ops)
    assert str(info.value).startswith("appendModifications[0]: ")
    assert message in str(info.value)


def test_working_patches_still_apply() -> None:
    cluster = _apply(
        [
            {"op": "add", "path": "/metadata", "value": {"filterMetadata": {}}},
            {"op": "add", "path": "/metadata/filterMetadata/x", "value": {"a": 1}},
            {"op": "add", "path": "/loadAssignment/endpoints/-", "value": {"priority": 1}},
            {"op": "replace", "path": "/loadAssignment/endpoints/1/priority", "value": 2},
            {"op": "add", "path": "/connectTimeout", "value": "2s"},
        ]
    )
    assert cluster.metadata.filter_metadata["x"]["a"] == 1
    assert [e.priority for e in cluster.load_assignment.endpoints] == [0, 2]
    assert cluster.connect_timeout.seconds == 2


def _refusal(ops: list[dict[str, Any]]) -> tuple[str, str] | None:
    try:
        parse_document(_patch_doc(ops), default_registry())
    except ResourceValidationError as exc:
        [error] = exc.errors
        return error.field, error.reason
    return None


FIELD = "spec.default.appendModifications[0].cluster.jsonPatches[{}].path"


@pytest.mark.parametrize(
    ("ops", "index", "reason"),
    [
        (THROUGH_A_NUMBER, 1, "/api is 179, not an object or a list"),
        (
            [{"op": "add", "path": "/a", "value": {"b": [1]}}, {"op": "add", "path": "/a/b/5", "value": 1}],
            1,
            "'5' is not an index of the list at /a/b (1 items)",
        ),
        (
            [{"op": "add", "path": "/a", "value": {}}, {"op": "replace", "path": "/a/c", "value": 1}],
            1,
            "jsonPatches replace: /a/c does not exist",
        ),
        (
            [{"op": "add", "path": "/a", "value": "s"}, {"op": "remove", "path": "/a/b/c"}],
            1,
            '/a is "s", not an object or a list',
        ),
    ],
)
def test_failures_known_at_apply_are_refused_with_the_field(
    ops: list[dict[str, Any]], index: int, reason: str
) -> None:
    refusal = _refusal(ops)
    assert refusal is not None
    assert refusal[0] == FIELD.format(index)
    assert reason in refusal[1]


@pytest.mark.parametrize(
    "ops",
    [
        # these depend on the resource patched: checked at generation
        [{"op": "add", "path": "/name/x", "value": 1}],
        [{"op": "add", "path": "/loadAssignment/endpoints/abc", "value": 1}],
        [{"op": "remove", "path": "/a"}, {"op": "replace", "path": "/a", "value": 1}],
        # an unknown object may be a list: after an insertion at its start, what was at /x/1 is not known
        [
            {"op": "add", "path": "/x/1", "value": 5},
            {"op": "add", "path": "/x/0", "value": {}},
            {"op": "add", "path": "/x/1/y", "value": 1},
        ],
        [
            {"op": "add", "path": "/a", "value": {"b": 1}},
            {"op": "add", "path": "/a/b", "value": {}},
            {"op": "add", "path": "/a/b/c", "value": 1},
        ],
    ],
)
def test_failures_that_depend_on_the_resource_are_not_refused_at_apply(ops: list[dict[str, Any]]) -> None:
    assert _refusal(ops) is None


def test_apply_time_check_leaves_the_stored_values_alone() -> None:
    value = {"b": {"c": 1}}
    doc = _patch_doc(
        [{"op": "add", "path": "/a", "value": value}, {"op": "add", "path": "/a/b/d", "value": 2}]
    )
    parse_document(doc, default_registry())
    assert doc["spec"]["default"]["appendModifications"][0]["cluster"]["jsonPatches"][0]["value"] == value
