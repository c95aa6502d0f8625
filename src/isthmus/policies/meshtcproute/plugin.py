"""MeshTCPRoute: a weighted split of an outbound's connections over services or subsets of their instances.

The ``to`` items naming the outbound's service are taken lowest priority first (Kuma's order, as for every
policy) and the ``default`` of their rules merged as JSON Merge Patches: the most specific policy's
``backendRefs`` win as a whole. On a TCP outbound the split lands in ``tcp_backends`` (TCP proxy weighted
clusters). On an HTTP outbound a MeshHTTPRoute for the same destination takes precedence (as in Kuma); without
one, the split becomes a single catch-all HTTP route with weighted clusters.
"""

from __future__ import annotations

from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import Protocol, ProxyIR
from isthmus.ir.traffic import HttpRoute
from isthmus.policies.engine import Origin, merge_patch
from isthmus.policies.meshhttproute.plugin import Backends, ordered_to_items
from isthmus.policies.meshtcproute.api import MeshTCPRouteSpec, RuleConf
from isthmus.policies.plugin import PolicyInputs, policy_type
from isthmus.resources.registry import Resource


def resolve(
    policies: tuple[Resource, ...], dp: Resource, service: str
) -> tuple[RuleConf, tuple[Origin, ...]] | None:
    """The merged rule for ``dp``'s outbound to ``service``; None when no MeshTCPRoute applies."""
    conf: dict[str, Any] = {}
    origins = []
    for policy, i, item in ordered_to_items(policies, dp, service):
        for j, rule in enumerate(item.rules):
            conf = merge_patch(conf, rule.default.model_dump(by_alias=True, exclude_none=True, mode="json"))
            origins.append(Origin(policy.type.kind, policy.name, f"to[{i}].rules[{j}]"))
    if not origins:
        return None
    return RuleConf.model_validate(conf), tuple(origins)


class MeshTCPRoutePlugin:
    resource_type = policy_type("MeshTCPRoute", "meshtcproutes", MeshTCPRouteSpec, "mtr")
    order = 200

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        backends = Backends(ir, inputs.ctx)
        outbounds = []
        for outbound in ir.outbounds:
            resolved = None
            if outbound.protocol is Protocol.TCP or not outbound.routes:
                resolved = resolve(inputs.policies, inputs.dataplane, outbound.service)
            if resolved is None:
                outbounds.append(outbound)
                continue
            conf, origins = resolved
            weighted = backends.weighted(outbound, conf.backend_refs or [])
            if outbound.protocol is Protocol.TCP:
                outbounds.append(evolve(outbound, tcp_backends=weighted))
            else:
                route = HttpRoute(name=f"{origins[-1].policy}/{origins[-1].section}", backends=weighted)
                outbounds.append(evolve(outbound, routes=(route,)))
        return backends.add_to(evolve(ir, outbounds=tuple(outbounds)))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        from isthmus.policies.engine import dataplane_spec

        outbounds = []
        for outbound in dataplane_spec(inputs.dataplane).networking.outbound:
            resolved = resolve(inputs.policies, inputs.dataplane, outbound.service)
            if resolved is not None:
                conf, origins = resolved
                outbounds.append(
                    {
                        "port": outbound.port,
                        "service": outbound.service,
                        "conf": conf.model_dump(by_alias=True, exclude_none=True, mode="json"),
                        "origins": [o.as_dict() for o in origins],
                    }
                )
        return {"inbounds": [], "outbounds": outbounds}


PLUGIN = MeshTCPRoutePlugin()
