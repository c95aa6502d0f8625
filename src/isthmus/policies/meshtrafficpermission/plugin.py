"""MeshTrafficPermission as a plug-in: from the matched policies to the permission rules of each inbound.

Kuma's ``from`` semantics: every ``from`` item selects a set of clients and gives it an action; items are taken
in policy order (lowest priority first) and, within a policy, in list order; for a given client the last item
whose set contains it decides. A client that no item selects is denied.

Clients are identified by their certificate's URI SANs: ``spiffe://<mesh>/<service>`` and ``kuma://<tag>/<value>``
(see :mod:`isthmus.pki.issuer`). The rules are compiled into one boolean expression over those identities, which
the xDS stage turns into an Envoy RBAC policy. The plug-in sets them on every inbound of a mesh with mTLS (without
mTLS there are no client identities, and every client is let through).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, Permissions, Principal, ProxyIR
from isthmus.policies.engine import dataplane_spec
from isthmus.policies.matching import matched_for_inbound
from isthmus.policies.meshtrafficpermission.api import Action, Match, MeshTrafficPermissionSpec, SpiffeIdType
from isthmus.policies.plugin import PolicyInputs, inbound_of, map_inbounds, policy_type
from isthmus.resources.common import SERVICE_TAG, TargetRef, TargetRefKind
from isthmus.resources.dataplane import Inbound
from isthmus.resources.registry import Resource, ResourceType


@dataclass(frozen=True)
class PermissionItem:
    policy: str
    index: int
    from_ref: TargetRef
    action: Action
    principal: Principal


@dataclass(frozen=True)
class InboundPermissions:
    items: tuple[PermissionItem, ...]
    allow: Principal  # who is let through
    shadow_allow: Principal  # who would be let through if AllowWithShadowDeny were Deny

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.policy for i in self.items))


def identity_uri(mesh: str, key: str, value: str) -> str:
    if key == SERVICE_TAG:
        return f"spiffe://{mesh}/{value}"
    return f"kuma://{key}/{value}"


def client_principal(mesh: str, ref: TargetRef) -> Principal:
    if ref.kind is TargetRefKind.MESH:
        return Principal.any()
    tags: dict[str, str] = dict(ref.tags or {})
    if ref.kind in (TargetRefKind.MESH_SERVICE, TargetRefKind.MESH_SERVICE_SUBSET):
        assert ref.name is not None
        tags[SERVICE_TAG] = ref.name
    return Principal.all_of(
        tuple(Principal.uri(identity_uri(mesh, k, v)) for k, v in sorted(tags.items()) if v != "*")
    )


def _decide(items: Sequence[PermissionItem], allowed: set[Action]) -> Principal:
    """Clients for which the last matching item's action is in ``allowed``."""
    alternatives: list[Principal] = []
    for i, item in enumerate(items):
        if item.action not in allowed:
            continue
        overriding = [later.principal for later in items[i + 1 :] if later.action not in allowed]
        if overriding:
            alternatives.append(
                Principal.all_of((item.principal, Principal.negate(Principal.any_of(tuple(overriding)))))
            )
        else:
            alternatives.append(item.principal)
    return Principal.any_of(tuple(alternatives))


def _rule_principal(match: Match) -> Principal:
    sid = match.spiffe_id
    if sid.type is SpiffeIdType.PREFIX:
        return Principal.uri_prefix(sid.value)
    return Principal.uri(sid.value)


def _any(matches: Sequence[Match]) -> Principal:
    return Principal.any_of(tuple(_rule_principal(m) for m in matches))


def inbound_permissions(
    mesh: str, policies: Sequence[Resource], dataplane: Resource, inbound: Inbound
) -> InboundPermissions:
    """``from`` items decide by the last matching item (see the module docstring). ``rules`` (Kuma 2.12+) add
    SPIFFE ID matches from every matching policy: a client matching any ``deny`` is refused whatever else
    matches, one matching ``allow`` or ``allowWithShadowDeny`` is let in; the shadow rules also refuse every
    ``allowWithShadowDeny`` match, whatever ``allow`` matches."""
    items: list[PermissionItem] = []
    allow: list[Match] = []
    deny: list[Match] = []
    shadow: list[Match] = []
    for policy in matched_for_inbound(policies, dataplane, inbound):
        spec = policy.spec
        assert isinstance(spec, MeshTrafficPermissionSpec)
        for i, item in enumerate(spec.from_):
            items.append(
                PermissionItem(
                    policy.name,
                    i,
                    item.target_ref,
                    item.default.action,
                    client_principal(mesh, item.target_ref),
                )
            )
        for rule in spec.rules or []:
            allow += rule.default.allow or []
            deny += rule.default.deny or []
            shadow += rule.default.allow_with_shadow_deny or []
    enforce = {Action.ALLOW, Action.ALLOW_WITH_SHADOW_DENY}
    from_allow = _decide(items, enforce)
    from_shadow = _decide(items, {Action.ALLOW})
    if allow or deny or shadow:
        denied = Principal.negate(_any(deny))
        from_allow = Principal.all_of((Principal.any_of((from_allow, _any(allow), _any(shadow))), denied))
        # Kuma's shadow-deny example: a client matching allowWithShadowDeny is shadow-denied even when a broader
        # allow also matches it (deny > allowWithShadowDeny > allow in the shadow rules)
        shadow_denied = Principal.negate(_any(shadow))
        from_shadow = Principal.all_of((Principal.any_of((from_shadow, _any(allow))), denied, shadow_denied))
    return InboundPermissions(items=tuple(items), allow=from_allow, shadow_allow=from_shadow)


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _rules(policy: Resource) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One policy's items as ``inspect --policies`` shows them, and their origins."""
    spec = policy.spec
    assert isinstance(spec, MeshTrafficPermissionSpec)
    items: list[dict[str, Any]] = []
    origins: list[dict[str, str]] = []
    top = _dump(spec.target_ref)
    kind = MeshTrafficPermissionPlugin.resource_type.kind
    for i, item in enumerate(spec.from_):
        items.append(
            {
                "policy": policy.name,
                "targetRef": top,
                "from": _dump(item.target_ref),
                "action": item.default.action.value,
            }
        )
        origins.append({"kind": kind, "policy": policy.name, "section": f"from[{i}]"})
    for j, rule in enumerate(spec.rules or []):
        items.append({"policy": policy.name, "targetRef": top, "rule": j, **_dump(rule.default)})
        origins.append({"kind": kind, "policy": policy.name, "section": f"rules[{j}]"})
    return items, origins


class MeshTrafficPermissionPlugin:
    resource_type: ResourceType = policy_type(
        "MeshTrafficPermission", "meshtrafficpermissions", MeshTrafficPermissionSpec, "mtp"
    )
    order = 50  # first: it only reads the inbounds of the base IR

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        def edit(listener: InboundListener) -> InboundListener:
            if listener.tls is None:
                return listener  # no mTLS: no identities to check
            perms = inbound_permissions(
                inputs.ctx.name, inputs.policies, inputs.dataplane, inbound_of(inputs, listener)
            )
            return evolve(listener, permissions=Permissions(perms.allow, perms.shadow_allow, perms.policies))

        return map_inbounds(ir, edit)

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        inbounds = []
        for inbound in dataplane_spec(inputs.dataplane).networking.inbound:
            items: list[dict[str, Any]] = []
            origins: list[dict[str, str]] = []
            for policy in matched_for_inbound(inputs.policies, inputs.dataplane, inbound):
                policy_items, policy_origins = _rules(policy)
                items += policy_items
                origins += policy_origins
            inbounds.append(
                {
                    "port": inbound.port,
                    "service": inbound.service,
                    "rules": items,
                    "precedence": "last matching rule wins",
                    "origins": origins,
                }
            )
        return {"inbounds": inbounds, "outbounds": []}


PLUGIN = MeshTrafficPermissionPlugin()
