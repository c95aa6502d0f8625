"""The generation pipeline as the reconciler runs it, without the store: Universal documents -> validated
resources -> mesh context -> per proxy: workload certificate, IR, packed xDS resources, snapshot.

:func:`generate` returns one :class:`Outcome` per Dataplane. The only failures a schema-valid input may cause
are those of a MeshProxyPatch that does not fit a proxy (:data:`CONTAINED`): the reconciler keeps that proxy on
its last good configuration and records the error. Anything else propagates: it is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from isthmus.context.mesh_context import build_mesh_context
from isthmus.cp.certificates import WorkloadCertificates
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import ProxyIR
from isthmus.pki.ca import CertificateAuthority, generate_ca
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import Resource, parse_document
from isthmus.xds.node import node_id
from isthmus.xds.snapshot import Resource as XdsResource
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed
from isthmus.xds.translate.patches import PatchError
from tests.property.strategies import REGISTRY

# Errors a MeshProxyPatch may legitimately cause for one proxy (a value that does not fit it, a modification
# that leaves a dangling reference or a duplicate name); the reconciler contains and records them.
CONTAINED: tuple[type[Exception], ...] = (PatchError, ValueError)


@dataclass
class Outcome:
    name: str
    ir: ProxyIR | None
    resources: Mapping[str, list[XdsResource]] | None
    error: Exception | None = None


@dataclass
class Parsed:
    mesh: Resource | None
    dataplanes: list[Resource]
    policies: list[Resource]
    refused: list[tuple[dict[str, Any], ResourceValidationError]]


def parse_all(docs: Iterable[dict[str, Any]]) -> Parsed:
    """Validate every document; the refused ones are set aside (as the API would answer 400 for them)."""
    out = Parsed(None, [], [], [])
    for doc in docs:
        try:
            res = parse_document(doc, REGISTRY)
        except ResourceValidationError as exc:
            out.refused.append((doc, exc))
            continue
        if res.type.kind == "Mesh":
            out.mesh = res
        elif res.type.kind == "Dataplane":
            out.dataplanes.append(res)
        elif res.type.is_policy:
            out.policies.append(res)
    if out.mesh is not None:  # what the store would hold: resources of that mesh, one per kind and name
        keep = {(r.type.kind, r.name): r for r in [*out.dataplanes, *out.policies] if r.mesh == out.mesh.name}
        out.dataplanes = [r for r in keep.values() if r.type.kind == "Dataplane"]
        out.policies = [r for r in keep.values() if r.type.is_policy]
    return out


@cache
def mesh_ca(mesh: str, backend: str) -> CertificateAuthority:
    return generate_ca(mesh, backend=backend)


def tag_values(dp: Resource) -> dict[str, tuple[str, ...]]:
    """The tag values a Dataplane's certificate carries (as the reconciler computes them)."""
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    values: dict[str, set[str]] = {}
    for inbound in spec.networking.inbound:
        for k, v in inbound.tags.items():
            if k != "kuma.io/service":
                values.setdefault(k, set()).add(v)
    return {k: tuple(sorted(v)) for k, v in values.items()}


def generate(mesh: Resource, dataplanes: list[Resource], policies: list[Resource]) -> list[Outcome]:
    """Every proxy's configuration; raises on any failure that is not a contained MeshProxyPatch one."""
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    backend = spec.enabled_backend
    ca = mesh_ca(mesh.name, backend.name) if backend is not None else None
    ctx = build_mesh_context(mesh, dataplanes, policies, ca.cert_pem.decode() if ca else "")
    certificates = WorkloadCertificates()
    outcomes = []
    for dp in ctx.dataplanes.values():
        identity = None
        if ca is not None and backend is not None:
            dspec = dp.spec
            assert isinstance(dspec, DataplaneSpec)
            issued = certificates.identity(
                node_id(mesh.name, dp.name),
                ca=ca,
                mesh=mesh.name,
                services=tuple(dspec.services),
                tags=tag_values(dp),
                lifetime=backend.cert_lifetime,
            )
            identity = Identity(issued.certificate.cert_pem.decode(), issued.certificate.key_pem.decode())
        ir = build_proxy_ir(ctx, dp.name, identity)
        try:
            packed = translate_packed(ir)
            snapshot = Snapshot.of_resources(packed)
            problems = snapshot.consistency_errors()
            if problems:
                raise ValueError("inconsistent snapshot: " + "; ".join(problems))
        except CONTAINED as exc:
            if not ir.patches:
                raise
            outcomes.append(Outcome(dp.name, ir, None, exc))
            continue
        outcomes.append(Outcome(dp.name, ir, packed))
    return outcomes
