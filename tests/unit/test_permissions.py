"""MeshTrafficPermission matching and precedence, evaluated on client identities."""

from __future__ import annotations

from typing import Any

import pytest

from isthmus.catalog import default_registry
from isthmus.policies.matching import matched_for_inbound, sort_policies
from isthmus.policies.meshtrafficpermission.plugin import inbound_permissions
from isthmus.resources.registry import Resource, parse_document

REG = default_registry()


def dp(
    name: str = "web-1", service: str = "web", labels: dict[str, str] | None = None, **tags: str
) -> Resource:
    doc: dict[str, Any] = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "labels": labels or {},
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {
                    "port": 10001,
                    "servicePort": 8080,
                    "name": "main",
                    "tags": {"kuma.io/service": service, **tags},
                }
            ],
        },
    }
    return parse_document(doc, REG)


def mtp(name: str, target: dict[str, Any], *froms: tuple[dict[str, Any], str]) -> Resource:
    doc = {
        "type": "MeshTrafficPermission",
        "mesh": "default",
        "name": name,
        "spec": {
            "targetRef": target,
            "from": [{"targetRef": ref, "default": {"action": action}} for ref, action in froms],
        },
    }
    return parse_document(doc, REG)


def client(service: str, **tags: str) -> set[str]:
    return {f"spiffe://default/{service}", *(f"kuma://{k}/{v}" for k, v in tags.items())}


def allowed(policies: list[Resource], caller: set[str], target: Resource | None = None) -> bool:
    target = target or dp()
    inbound = target.spec.networking.inbound[0]  # type: ignore[attr-defined]
    perms = inbound_permissions("default", policies, target, inbound)
    return perms.allow.matches(caller)


MESH = {"kind": "Mesh"}


def test_no_permission_denies_everyone() -> None:
    assert not allowed([], client("backend"))


def test_allow_all() -> None:
    assert allowed([mtp("allow-all", MESH, (MESH, "Allow"))], client("backend"))


def test_deny_for_one_service_keeps_others_allowed() -> None:
    policies = [
        mtp("allow-all", MESH, (MESH, "Allow")),
        mtp(
            "deny-backend",
            {"kind": "MeshService", "name": "web"},
            ({"kind": "MeshService", "name": "backend"}, "Deny"),
        ),
    ]
    assert not allowed(policies, client("backend"))
    assert allowed(policies, client("frontend"))


def test_more_specific_top_level_target_wins_over_name_order() -> None:
    # 'a-deny' sorts first by name (so would win a tie) but is Mesh-wide; the MeshService policy is more specific
    policies = [
        mtp("a-deny", MESH, (MESH, "Deny")),
        mtp("z-allow", {"kind": "MeshService", "name": "web"}, (MESH, "Allow")),
    ]
    assert allowed(policies, client("backend"))


def test_name_tie_break_smaller_name_wins() -> None:
    policies = [mtp("aaa", MESH, (MESH, "Deny")), mtp("bbb", MESH, (MESH, "Allow"))]
    assert [p.name for p in sort_policies(policies)] == ["bbb", "aaa"]
    assert not allowed(policies, client("backend"))


def test_later_from_item_in_same_policy_overrides() -> None:
    policies = [mtp("p", MESH, (MESH, "Allow"), ({"kind": "MeshSubset", "tags": {"version": "v1"}}, "Deny"))]
    assert not allowed(policies, client("backend", version="v1"))
    assert allowed(policies, client("backend", version="v2"))


def test_mesh_service_subset_needs_both_service_and_tags() -> None:
    policies = [
        mtp("p", MESH, ({"kind": "MeshServiceSubset", "name": "backend", "tags": {"env": "prod"}}, "Allow"))
    ]
    assert allowed(policies, client("backend", env="prod"))
    assert not allowed(policies, client("backend", env="dev"))
    assert not allowed(policies, client("other", env="prod"))


def test_allow_with_shadow_deny_allows_but_shadow_denies() -> None:
    policies = [mtp("p", MESH, (MESH, "AllowWithShadowDeny"))]
    target = dp()
    inbound = target.spec.networking.inbound[0]  # type: ignore[attr-defined]
    perms = inbound_permissions("default", policies, target, inbound)
    assert perms.allow.matches(client("x"))
    assert not perms.shadow_allow.matches(client("x"))


@pytest.mark.parametrize(
    ("target", "selected"),
    [
        ({"kind": "Mesh"}, True),
        ({"kind": "MeshService", "name": "web"}, True),
        ({"kind": "MeshService", "name": "other"}, False),
        ({"kind": "MeshSubset", "tags": {"version": "v1"}}, True),
        ({"kind": "MeshSubset", "tags": {"version": "v2"}}, False),
        ({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}, True),
        ({"kind": "Dataplane", "name": "web-1"}, True),
        ({"kind": "Dataplane", "name": "web-2"}, False),
        ({"kind": "Dataplane", "labels": {"team": "a"}}, True),
        ({"kind": "Dataplane", "labels": {"team": "b"}}, False),
        ({"kind": "Dataplane", "name": "web-1", "sectionName": "main"}, True),
        ({"kind": "Dataplane", "name": "web-1", "sectionName": "other"}, False),
    ],
)
def test_top_level_selection(target: dict[str, Any], selected: bool) -> None:
    target_dp = dp(labels={"team": "a"}, version="v1")
    inbound = target_dp.spec.networking.inbound[0]  # type: ignore[attr-defined]
    policy = mtp("p", target, (MESH, "Allow"))
    assert (matched_for_inbound([policy], target_dp, inbound) == [policy]) is selected


def test_dataplane_by_name_beats_by_labels() -> None:
    by_labels = mtp("a", {"kind": "Dataplane", "labels": {"team": "a"}}, (MESH, "Allow"))
    by_name = mtp("b", {"kind": "Dataplane", "name": "web-1"}, (MESH, "Deny"))
    assert [p.name for p in sort_policies([by_name, by_labels])] == ["a", "b"]
    assert not allowed([by_labels, by_name], client("x"), dp(labels={"team": "a"}))


def rules_mtp(name: str, **lists: list[tuple[str, str]]) -> Resource:
    conf = {
        key: [{"spiffeID": {"type": kind, "value": value}} for kind, value in items]
        for key, items in lists.items()
    }
    doc = {
        "type": "MeshTrafficPermission",
        "mesh": "default",
        "name": name,
        "spec": {"targetRef": MESH, "rules": [{"default": conf}]},
    }
    return parse_document(doc, REG)


def test_rules_form_deny_wins_over_allow_and_prefixes_match() -> None:
    policy = rules_mtp(
        "rules",
        allow=[("Prefix", "spiffe://default/")],
        deny=[("Exact", "spiffe://default/legacy")],
        allowWithShadowDeny=[("Exact", "spiffe://other/new")],
    )
    assert allowed([policy], client("backend"))
    assert not allowed([policy], client("legacy"))
    assert allowed([policy], {"spiffe://other/new"})
    target = dp()
    inbound = target.spec.networking.inbound[0]  # type: ignore[attr-defined]
    perms = inbound_permissions("default", [policy], target, inbound)
    assert not perms.shadow_allow.matches({"spiffe://other/new"})  # shadow rules would refuse it
    assert not perms.allow.matches({"spiffe://third/x"})


def test_rules_and_from_combine_with_deny_first() -> None:
    policies = [
        mtp("allow-all", MESH, (MESH, "Allow")),
        rules_mtp("no-legacy", deny=[("Exact", "spiffe://default/legacy")]),
    ]
    assert allowed(policies, client("backend"))
    assert not allowed(policies, client("legacy"))


def test_rules_need_spiffe_ids() -> None:
    from isthmus.resources.errors import ResourceValidationError

    with pytest.raises(ResourceValidationError) as err:
        rules_mtp("bad", allow=[("Exact", "web")])
    assert "spec.rules[0].default.allow[0].spiffeID" in str(err.value)
    with pytest.raises(ResourceValidationError) as err:
        parse_document({"type": "MeshTrafficPermission", "mesh": "default", "name": "x", "spec": {}}, REG)
    assert "from" in str(err.value)
