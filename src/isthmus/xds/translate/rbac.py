"""Permissions (a principal expression over peer URI SANs) as Envoy RBAC filters, HTTP and network."""

from __future__ import annotations

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import string_pb2

from isthmus.ir.model import Permissions, Principal

POLICY_NAME = "MeshTrafficPermission"


def principal(p: Principal) -> rbac_config.Principal:
    if p.op == "any":
        return rbac_config.Principal(any=True)
    if p.op == "none":
        return rbac_config.Principal(not_id=rbac_config.Principal(any=True))
    if p.op == "uri":
        return rbac_config.Principal(
            authenticated=rbac_config.Principal.Authenticated(
                principal_name=string_pb2.StringMatcher(exact=p.value)
            )
        )
    if p.op == "uri_prefix":
        return rbac_config.Principal(
            authenticated=rbac_config.Principal.Authenticated(
                principal_name=string_pb2.StringMatcher(prefix=p.value)
            )
        )
    if p.op == "and":
        return rbac_config.Principal(
            and_ids=rbac_config.Principal.Set(ids=[principal(c) for c in p.children])
        )
    if p.op == "or":
        return rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=[principal(c) for c in p.children]))
    return rbac_config.Principal(not_id=principal(p.children[0]))


def rules(allowed: Principal) -> rbac_config.RBAC:
    """ALLOW rules: nobody passes unless ``allowed`` matches (an empty policy set denies everyone)."""
    out = rbac_config.RBAC(action=rbac_config.RBAC.ALLOW)
    if allowed.op != "none":
        out.policies[POLICY_NAME].CopyFrom(
            rbac_config.Policy(
                permissions=[rbac_config.Permission(any=True)],
                principals=[principal(allowed)],
            )
        )
    return out


def http_filter_config(perms: Permissions) -> http_rbac.RBAC:
    cfg = http_rbac.RBAC(rules=rules(perms.allow))
    if perms.shadow_allow != perms.allow:
        cfg.shadow_rules.CopyFrom(rules(perms.shadow_allow))
        cfg.shadow_rules_stat_prefix = "shadow_deny_"
    return cfg


def network_filter_config(perms: Permissions, stat_prefix: str) -> network_rbac.RBAC:
    cfg = network_rbac.RBAC(rules=rules(perms.allow), stat_prefix=stat_prefix)
    if perms.shadow_allow != perms.allow:
        cfg.shadow_rules.CopyFrom(rules(perms.shadow_allow))
        cfg.shadow_rules_stat_prefix = "shadow_deny_"
    return cfg
