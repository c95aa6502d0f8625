"""MeshProxyPatch: the selected proxies' Envoy resources are modified after translation.

Modifications of every matching policy accumulate (``appendModifications``), lowest priority first. They are
checked against the Envoy API when the policy is applied; one that cannot be applied to a given proxy leaves that
proxy on its last good configuration (the reconciler reports the error) and affects no other proxy.
"""

from __future__ import annotations

import json
from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import ProxyIR
from isthmus.policies.engine import resolve_proxy
from isthmus.policies.meshproxypatch.api import MeshProxyPatchSpec
from isthmus.policies.plugin import PolicyInputs, policy_type
from isthmus.resources.registry import ResourceType


class MeshProxyPatchPlugin:
    resource_type: ResourceType = policy_type("MeshProxyPatch", "meshproxypatches", MeshProxyPatchSpec, "mpp")
    order = 9999  # last, as in Kuma

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        resolved = resolve_proxy(inputs.policies, inputs.dataplane)
        mods = resolved.conf.get("appendModifications") or []
        if not mods:
            return ir
        return evolve(ir, patches=tuple(json.dumps(m, sort_keys=True) for m in mods))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        resolved = resolve_proxy(inputs.policies, inputs.dataplane)
        if resolved.empty:
            return {"inbounds": [], "outbounds": []}
        return {
            "proxy": {"conf": dict(resolved.conf), "origins": [o.as_dict() for o in resolved.origins]},
            "inbounds": [],
            "outbounds": [],
        }


PLUGIN = MeshProxyPatchPlugin()
