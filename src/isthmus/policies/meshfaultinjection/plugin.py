"""MeshFaultInjection: Envoy HTTP fault filters on the selected inbounds.

Mesh-wide items (``from`` Mesh, ``rules``) are merged like every policy (the more specific wins, the ``http`` list
is replaced). Items for particular clients (MeshService, MeshSubset, MeshServiceSubset) become their own fault
filters, placed first, that only act on requests whose caller identity (the ``x-forwarded-client-cert`` URIs the
inbound sets from the peer certificate) is among that client's; the Mesh-wide faults follow.
"""

from __future__ import annotations

from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, ProxyIR
from isthmus.ir.traffic import FaultInjection
from isthmus.policies.engine import dataplane_spec, resolve_from
from isthmus.policies.matching import selects_inbound, sort_policies, target_ref_of
from isthmus.policies.meshfaultinjection.api import Conf, MeshFaultInjectionSpec
from isthmus.policies.meshtrafficpermission.plugin import identity_uri
from isthmus.policies.plugin import (
    PolicyInputs,
    ToFromPlugin,
    inbound_of,
    map_inbounds,
    parse_conf,
    policy_type,
)
from isthmus.resources.common import SERVICE_TAG, TargetRef, TargetRefKind
from isthmus.resources.duration import duration_ms

_UNITS = {"k": 1, "m": 1000, "g": 1_000_000}


def _kbps(limit: str) -> int:
    number = "".join(c for c in limit if c.isdigit())
    unit = limit.strip()[len(number) :].strip().lower()[0]
    return int(number) * _UNITS[unit]


def faults(conf: Conf, clients: tuple[str, ...] = ()) -> list[FaultInjection]:
    out = []
    for f in conf.http or []:
        out.append(
            FaultInjection(
                abort_status=f.abort.http_status if f.abort else None,
                abort_percent=float(f.abort.percentage) if f.abort else 0.0,
                delay_ms=duration_ms(f.delay.value) if f.delay else None,
                delay_percent=float(f.delay.percentage) if f.delay else 0.0,
                response_bandwidth_kbps=_kbps(f.response_bandwidth.limit) if f.response_bandwidth else None,
                response_bandwidth_percent=float(f.response_bandwidth.percentage)
                if f.response_bandwidth
                else 0.0,
                clients=clients,
            )
        )
    return out


def client_uris(mesh: str, ref: TargetRef) -> tuple[str, ...]:
    """The URI SANs a client must all carry to be selected by a ``from`` targetRef."""
    tags = dict(ref.tags or {})
    if ref.kind in (TargetRefKind.MESH_SERVICE, TargetRefKind.MESH_SERVICE_SUBSET) and ref.name:
        tags[SERVICE_TAG] = ref.name
    return tuple(identity_uri(mesh, k, v) for k, v in sorted(tags.items()))


class MeshFaultInjectionPlugin(ToFromPlugin):
    resource_type = policy_type("MeshFaultInjection", "meshfaultinjections", MeshFaultInjectionSpec, "mfi")
    order = 800
    conf_model = Conf

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir

        def edit(listener: InboundListener) -> InboundListener:
            inbound = inbound_of(inputs, listener)
            specific: list[FaultInjection] = []
            ordered = sort_policies(
                p for p in inputs.policies if selects_inbound(target_ref_of(p), inputs.dataplane, inbound)
            )
            for policy in reversed(ordered):  # most specific policy first
                spec = policy.narrow(MeshFaultInjectionSpec).spec
                for item in spec.from_ or []:
                    if item.target_ref.kind is not TargetRefKind.MESH:
                        specific += faults(item.default, client_uris(inputs.ctx.name, item.target_ref))
            general = parse_conf(Conf, resolve_from(inputs.policies, inputs.dataplane, inbound))
            mesh_wide = faults(general) if general else []
            if not specific and not mesh_wide:
                return listener
            return evolve(listener, faults=tuple(specific + mesh_wide))

        return map_inbounds(ir, edit)

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        described = super().describe(inputs)
        net = dataplane_spec(inputs.dataplane).networking
        for entry in described["inbounds"]:
            inbound = next(i for i in net.inbound if i.port == entry["port"])
            entry["clientSpecific"] = [
                {
                    "policy": p.name,
                    "from": item.target_ref.model_dump(by_alias=True, exclude_none=True, mode="json"),
                }
                for p in inputs.policies
                if selects_inbound(target_ref_of(p), inputs.dataplane, inbound)
                for item in (p.narrow(MeshFaultInjectionSpec).spec.from_ or [])
                if item.target_ref.kind is not TargetRefKind.MESH
            ]
        return described


PLUGIN = MeshFaultInjectionPlugin()
