"""Certificates on the control plane: one built-in CA per mesh (kept in the store) and one workload certificate
per data plane (kept in memory, re-issued before 80% of its lifetime has passed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from isthmus.pki.ca import CertificateAuthority, generate_ca
from isthmus.pki.issuer import WorkloadCertificate, issue_workload_certificate, needs_rotation
from isthmus.store.base import AlreadyExists, Conflict, Op, OpKind, ResourceStore

SECRET_TYPE = "Secret"


def ca_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-cert-{backend}"


async def ensure_mesh_ca(store: ResourceStore, mesh: str, backend: str) -> CertificateAuthority:
    """Load the mesh CA of ``backend`` from the store, creating it the first time (race-safe)."""
    name = ca_secret_name(mesh, backend)
    record = await store.get(SECRET_TYPE, mesh, name)
    if record is None:
        ca = generate_ca(mesh, backend=backend)
        data = {"cert": ca.cert_pem.decode(), "key": ca.key_pem.decode()}
        try:
            await store.write([Op(OpKind.CREATE, SECRET_TYPE, mesh, name, spec={"data": data})])
            return ca
        except (AlreadyExists, Conflict):
            record = await store.get(SECRET_TYPE, mesh, name)
            if record is None:
                raise
    data = record.spec["data"]
    return CertificateAuthority(cert_pem=data["cert"].encode(), key_pem=data["key"].encode())


@dataclass(frozen=True)
class IssuedIdentity:
    certificate: WorkloadCertificate
    ca_fingerprint: bytes
    services: tuple[str, ...]
    tags: tuple[tuple[str, tuple[str, ...]], ...]
    lifetime: timedelta
    generation: int
    issued_at: datetime


class WorkloadCertificates:
    """Issues and rotates the certificate of each data plane (keyed by node id)."""

    def __init__(self) -> None:
        self._issued: dict[str, IssuedIdentity] = {}

    def identity(
        self,
        node_id: str,
        *,
        ca: CertificateAuthority,
        mesh: str,
        services: tuple[str, ...],
        tags: Mapping[str, tuple[str, ...]],
        lifetime: timedelta,
        now: datetime | None = None,
    ) -> IssuedIdentity:
        now = now or datetime.now(UTC)
        tag_key = tuple(sorted((k, tuple(sorted(v))) for k, v in tags.items()))
        current = self._issued.get(node_id)
        if (
            current is not None
            and current.ca_fingerprint == ca.cert_pem
            and current.services == services
            and current.tags == tag_key
            and current.lifetime == lifetime
            and not needs_rotation(current.certificate, now)
        ):
            return current
        cert = issue_workload_certificate(
            ca,
            mesh=mesh,
            services=list(services),
            tags={k: list(v) for k, v in tag_key},
            lifetime=lifetime,
            now=now,
        )
        issued = IssuedIdentity(
            certificate=cert,
            ca_fingerprint=ca.cert_pem,
            services=services,
            tags=tag_key,
            lifetime=lifetime,
            generation=(current.generation + 1) if current else 1,
            issued_at=now,
        )
        self._issued[node_id] = issued
        return issued

    def get(self, node_id: str) -> IssuedIdentity | None:
        return self._issued.get(node_id)

    def forget(self, node_id: str) -> None:
        self._issued.pop(node_id, None)

    def next_rotation(self) -> datetime | None:
        """When the earliest certificate reaches 80% of its lifetime."""
        times = [i.certificate.rotation_due for i in self._issued.values()]
        return min(times) if times else None
