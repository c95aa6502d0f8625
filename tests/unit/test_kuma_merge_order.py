"""Merge order of ``to`` and ``from`` items, as Kuma has it in each mode (its design record MADR 066).

* outbounds addressed by ``kuma.io/service`` (Kuma 2.x's default, the only kind Isthmus serves): the matched
  policies in top-level order (kind, then name, the smaller name last), each one's items in ``to[]`` order; the
  item's targetRef kind plays no part;
* outbounds of real MeshService resources (Kuma's ``ToRules.ResourceRules``): top-level kind, then the item's
  targetRef kind, then the name.
"""

from __future__ import annotations

from isthmus.policies.engine import real_resource_to_key, resolve_from, resolve_to, service_tag_to_key
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.registry import Resource
from tests.unit.policy_fixtures import outbound, proxy, resources, web_mesh

BASE = web_mesh("backend")

# MADR 066, "Merging / Problem": policy aaa configures every destination, bbb only backend; both top-level Mesh.
MADR_066_TWO_POLICIES = """
---
type: MeshTimeout
mesh: m
name: aaa
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 2s}}
---
type: MeshTimeout
mesh: m
name: bbb
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default: {http: {requestTimeout: 1s}, idleTimeout: 1h}
"""

# MADR 066: one policy whose to[] lists MeshService backend, then Mesh: the later item wins for backend.
MADR_066_ONE_POLICY = """
---
type: MeshTimeout
mesh: m
name: one
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default: {http: {requestTimeout: 1s}, idleTimeout: 1h}
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 2s}}
"""

# MADR 066, "Migration": MeshTrafficPermission aaa denies the whole mesh, bbb allows backend.
MADR_066_MTP = """
---
type: MeshTrafficPermission
mesh: m
name: aaa
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
---
type: MeshTrafficPermission
mesh: m
name: bbb
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: MeshSubset, tags: {kuma.io/service: backend}}
    default: {action: Allow}
"""


def load(extra: str) -> tuple[Resource, list[Resource], list[Resource]]:
    return resources(BASE + extra)


def request_ms(extra: str) -> int | None:
    backend = outbound(proxy(BASE + extra))
    assert backend.timeouts is not None
    return backend.timeouts.request_ms


def test_service_tag_outbound_merges_in_policy_order_ignoring_the_item_kind() -> None:
    """MADR 066: for backend the result is merge($conf1, $conf2): aaa's Mesh item wins because aaa < bbb."""
    _, dps, pols = load(MADR_066_TWO_POLICIES)
    resolved = resolve_to(pols, dps[0], "backend")
    assert [o.policy for o in resolved.origins] == ["bbb", "aaa"]
    assert resolved.conf == {"http": {"requestTimeout": "2s"}, "idleTimeout": "1h"}
    assert request_ms(MADR_066_TWO_POLICIES) == 2000  # and that is what the proxy gets


def test_real_resource_order_puts_the_item_kind_before_the_name() -> None:
    """MADR 066's new approach (real MeshService outbounds): merge($conf2, $conf1), MeshService is more
    specific than Mesh whatever the policies are called."""
    _, dps, pols = load(MADR_066_TWO_POLICIES)
    resolved = resolve_to(pols, dps[0], "backend", order=real_resource_to_key)
    assert [o.policy for o in resolved.origins] == ["aaa", "bbb"]
    assert resolved.conf == {"http": {"requestTimeout": "1s"}, "idleTimeout": "1h"}


def test_items_of_one_policy_merge_in_index_order() -> None:
    """MADR 066: a to[] of MeshService backend ($conf1) then Mesh ($conf2) gives merge($conf1, $conf2) for
    backend, "because to-item with conf2 has greater index"."""
    _, dps, pols = load(MADR_066_ONE_POLICY)
    resolved = resolve_to(pols, dps[0], "backend")
    assert [o.section for o in resolved.origins] == ["to[0]", "to[1]"]
    assert resolved.conf == {"http": {"requestTimeout": "2s"}, "idleTimeout": "1h"}
    assert request_ms(MADR_066_ONE_POLICY) == 2000
    real = resolve_to(pols, dps[0], "backend", order=real_resource_to_key)
    assert [o.section for o in real.origins] == ["to[1]", "to[0]"]
    assert real.conf["http"] == {"requestTimeout": "1s"}


def test_other_destinations_only_get_the_mesh_items() -> None:
    _, dps, pols = load(MADR_066_TWO_POLICIES)
    for order in (service_tag_to_key, real_resource_to_key):
        other = resolve_to(pols, dps[0], "db", order=order)
        assert [o.policy for o in other.origins] == ["aaa"]
        assert other.conf == {"http": {"requestTimeout": "2s"}}


def test_top_level_kind_still_comes_first() -> None:
    """The policy order itself is unchanged: a Dataplane-targeted policy wins over a Mesh-targeted one."""
    extra = MADR_066_TWO_POLICIES.replace(
        "name: bbb\nspec:\n  targetRef: {kind: Mesh}",
        "name: bbb\nspec:\n  targetRef: {kind: Dataplane, name: web-1}",
    )
    _, dps, pols = load(extra)
    resolved = resolve_to(pols, dps[0], "backend")
    assert [o.policy for o in resolved.origins] == ["aaa", "bbb"]
    assert resolved.conf["http"] == {"requestTimeout": "1s"}


def test_from_items_merge_in_policy_order() -> None:
    """MADR 066 "Migration": with Kuma 2.x's from-rules the result is Deny for every client, backend included,
    because aaa sorts last; the from item's kind plays no part."""
    _, dps, pols = load(MADR_066_MTP)
    dp = dps[0]
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    inbound = spec.networking.inbound[0]
    backend = resolve_from(pols, dp, inbound, {"kuma.io/service": "backend"})
    assert [o.policy for o in backend.origins] == ["bbb", "aaa"]
    assert backend.conf == {"action": "Deny"}
    other = resolve_from(pols, dp, inbound, {"kuma.io/service": "frontend"})
    assert [o.policy for o in other.origins] == ["aaa"]
