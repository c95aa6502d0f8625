"""MeshProxyPatch ``@type`` values are resolved against the descriptor pool of a fixed set of Envoy messages:
nothing is imported because of a user's string, unknown types are refused at apply with the field named, and
regexes inside patches are checked as Envoy runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2

from isthmus.catalog import default_registry
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import parse_document
from isthmus.xds import types
from isthmus.xds.translate import known_types
from isthmus.xds.translate.patches import PatchError, apply_patches

REG = default_registry()
# ``import this`` prints the Zen of Python: the old resolver imported the package part of any type URL
OBSERVABLE = "type.googleapis.com/this.Module"


def patch(modification: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "p",
        "spec": {"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [modification]}},
    }


def refusal(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as info:
        parse_document(doc, REG)
    return [(e.field, e.reason) for e in info.value.errors]


def http_filter(typed_config: str) -> dict[str, Any]:
    return {"httpFilter": {"operation": "AddFirst", "value": f"name: f\ntyped_config: {typed_config}"}}


def test_a_type_url_naming_a_module_is_refused_and_nothing_is_imported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: ``importlib.import_module`` ran on the package part of the user's type URL."""
    assert "this" not in sys.modules
    problems = refusal(patch(http_filter(f"{{'@type': {OBSERVABLE}}}")))
    assert problems == [
        (
            "spec.default.appendModifications[0].httpFilter.value",
            problems[0][1],
        )
    ]
    reason = problems[0][1]
    assert reason.startswith("typed_config.@type: unknown type URL 'type.googleapis.com/this.Module'")
    assert "this" not in sys.modules
    assert capsys.readouterr().out == ""


def test_in_a_fresh_process_no_user_named_module_is_imported() -> None:
    """The same in a process where nothing else ran first, through apply and through translation."""
    code = textwrap.dedent(
        f"""
        import sys
        from isthmus.catalog import default_registry
        from isthmus.resources.errors import ResourceValidationError
        from isthmus.resources.registry import parse_document
        from isthmus.xds.translate.patches import PatchError, apply_patches
        doc = {json.dumps(patch(http_filter(f"{{'@type': {OBSERVABLE}}}")))}
        try:
            parse_document(doc, default_registry())
        except ResourceValidationError:
            pass
        else:
            raise SystemExit("accepted")
        mod = {{"cluster": {{"operation": "Add", "value": "name: c\\ntyped_extension_protocol_options: {{x: {{'@type': {OBSERVABLE}}}}}"}}}}
        try:
            apply_patches({{"type.googleapis.com/envoy.config.cluster.v3.Cluster": []}}, [__import__("json").dumps(mod)])
        except PatchError:
            pass
        else:
            raise SystemExit("patched")
        assert "this" not in sys.modules, "imported"
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Zen of Python" not in proc.stdout


def test_stored_patches_with_unknown_types_fail_at_translation_without_importing() -> None:
    mod = {
        "cluster": {
            "operation": "Add",
            "value": f"name: c\nload_balancing_policy: {{policies: [{{typed_extension_config: {{name: x, typed_config: {{'@type': '{OBSERVABLE}'}}}}}}]}}",
        }
    }
    with pytest.raises(PatchError, match=r"appendModifications\[0\]: load_balancing_policy.policies\[0\]"):
        apply_patches({types.CLUSTER: [cluster_pb2.Cluster(name="a")]}, [json.dumps(mod)])
    assert "this" not in sys.modules


@pytest.mark.parametrize(
    "type_url",
    [
        "type.googleapis.com/envoy.service.discovery.v3.DiscoveryRequest",  # loaded in the process, not a config
        "type.googleapis.com/envoy.extensions.filters.http.nonexistent.v3.Thing",
        "envoy.extensions.filters.http.buffer.v3.Buffer",  # no type URL prefix
        "type.googleapis.com/os.path",
    ],
)
def test_types_outside_the_known_set_are_refused(type_url: str) -> None:
    import isthmus.xds.server  # noqa: F401  (loads DiscoveryRequest into the descriptor pool)

    ((field, reason),) = refusal(patch(http_filter(f"{{'@type': '{type_url}', max_request_bytes: 1}}")))
    assert field == "spec.default.appendModifications[0].httpFilter.value"
    assert f"typed_config.@type: unknown type URL {type_url!r}" in reason


def test_known_extension_types_resolve_from_the_descriptor_pool() -> None:
    doc = patch(
        http_filter(
            "{'@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 1024}"
        )
    )
    parse_document(doc, REG)
    cls = known_types.message_class("type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer")
    assert cls is buffer_pb2.Buffer
    assert "envoy.extensions.filters.http.lua.v3.Lua" in known_types.load()
    assert "google.protobuf.Duration" in known_types.load()  # dependencies of the listed files


def test_json_patches_values_are_checked_for_types() -> None:
    mod = {
        "cluster": {
            "operation": "Patch",
            "match": {"name": "backend"},
            "jsonPatches": [
                {
                    "op": "add",
                    "path": "/transportSocket",
                    "value": {"name": "t", "typedConfig": {"@type": OBSERVABLE}},
                }
            ],
        }
    }
    ((field, reason),) = refusal(patch(mod))
    assert field == "spec.default.appendModifications[0].cluster.jsonPatches[0].value"
    assert reason.startswith("typedConfig.@type: unknown type URL")
    assert "this" not in sys.modules


def test_regexes_inside_patches_are_checked_as_envoy_runs_them() -> None:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    value = (
        f"name: envoy.filters.network.http_connection_manager\ntyped_config: {{'@type': {hcm}, stat_prefix: s, "
        "route_config: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {safe_regex: {regex: '/(?!x)'}}, "
        "direct_response: {status: 200}}]}]}}"
    )
    ((field, reason),) = refusal(patch({"networkFilter": {"operation": "AddFirst", "value": value}}))
    assert field == "spec.default.appendModifications[0].networkFilter.value"
    assert reason.startswith("typed_config.route_config.virtual_hosts[0].routes[0].match.safe_regex.regex ")
    assert "RE2" in reason


def test_the_resolver_imports_nothing_named_by_users() -> None:
    """The patch translator and the type resolver never call the import machinery on user input: the only
    imports are the fixed list of Isthmus's own modules."""
    assert all(m.startswith("envoy.") and m.endswith("_pb2") for m in known_types.EXTENSION_MODULES)
    before = set(sys.modules)
    with pytest.raises(known_types.UnknownType):
        known_types.message_class("type.googleapis.com/json.tool.Main")
    assert set(sys.modules) - before == set()
