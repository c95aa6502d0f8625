"""Certificates on the control plane: each mesh's CA (built-in ones kept in the store, provided ones read from
their data sources), the trust bundle its proxies verify peers with, and one workload certificate per data
plane (kept in memory, re-issued before 80% of its lifetime has passed).

Changing a mesh's CA (``mtls.enabledBackend`` now names a backend with another CA) never leaves two proxies
unable to talk. The switch goes through three phases, each finished once every proxy of the mesh has ACKed
the secrets generated for it (the ADS ACKs the control plane sees; a phase lasts at least a second, for Envoy
to hand the new TLS contexts to its workers) or after a grace period (10 minutes):

1. ``trust``: the bundle holds the old and the new CA; certificates are still signed by the old one.
2. ``reissue``: every workload certificate is re-issued by the new CA; the bundle still holds both.
3. ``steady``: the old CA leaves the bundle.

The phase is kept in the store (an internal ``Secret`` ``<mesh>.ca-trust`` holding certificates only, never a
key), so a control-plane restart in the middle of a switch resumes it instead of dropping the old CA.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from isthmus.pki.ca import CertificateAuthority, generate_ca
from isthmus.pki.issuer import WorkloadCertificate, issue_workload_certificate, needs_rotation
from isthmus.resources.mesh import CaBackend, CaBackendType, MeshSpec
from isthmus.store.base import AlreadyExists, Conflict, NotFound, Op, OpKind, ResourceStore
from isthmus.xds import types

if TYPE_CHECKING:
    from isthmus.cp.insights import Insights
    from isthmus.xds.snapshot import Snapshot

log = logging.getLogger(__name__)
SECRET_TYPE = "Secret"
DEFAULT_SWITCH_GRACE = timedelta(minutes=10)  # a phase ends at the latest this long after it started
SWITCH_POLL = timedelta(milliseconds=500)  # how often a switch in progress looks at the ACKs
# A phase lasts at least this long: Envoy ACKs a secret on its main thread and hands the new TLS contexts to
# its workers right after, so a handshake may still use the previous context for a moment after the ACK.
DEFAULT_SWITCH_SETTLE = timedelta(seconds=1)

AckedSecrets = Callable[[str], str | None]
"""The SDS version a proxy (node id) last ACKed, or None if none is known."""


def ca_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-cert-{backend}"


def trust_secret_name(mesh: str) -> str:
    return f"{mesh}.ca-trust"


def sds_acks(insights: Insights) -> AckedSecrets:
    """What :class:`WorkloadCertificates` needs from the ADS insights: each proxy's last ACKed SDS version."""

    def acked(node_id: str) -> str | None:
        node = insights.nodes.get(node_id)
        return node.last_ack.get(types.SECRET) if node is not None else None

    return acked


class _Generated(Protocol):
    @property
    def mesh(self) -> str: ...
    @property
    def snapshot(self) -> Snapshot | None: ...
    @property
    def error(self) -> str: ...


def sds_versions(proxies: Iterable[tuple[str, _Generated]], mesh: str) -> dict[str, str | None]:
    """For :meth:`WorkloadCertificates.mesh_trust`: the SDS version of each proxy of ``mesh`` (node id ->
    version), None for a proxy whose last generation failed (it still has an older configuration)."""
    return {
        nid: (p.snapshot.version(types.SECRET) if p.snapshot is not None and not p.error else None)
        for nid, p in proxies
        if p.mesh == mesh
    }


async def ensure_mesh_ca(store: ResourceStore, mesh: str, backend: str) -> CertificateAuthority:
    """Load the built-in CA of ``backend`` from the store, creating it the first time (race-safe)."""
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


class Phase(str, Enum):
    STEADY = "steady"
    TRUST = "trust"  # both CAs trusted, the old one still signs
    REISSUE = "reissue"  # both CAs trusted, the new one signs


@dataclass(frozen=True)
class SwitchState:
    """Where a mesh is in a CA switch; certificates as PEM text (never keys)."""

    target: str  # the enabled backend's CA
    target_backend: str
    retiring: tuple[str, ...]  # CAs some proxies may still present or rely on
    phase: Phase
    signer: str  # the CA that signs during the trust phase
    signer_backend: str
    since: datetime

    def to_data(self) -> dict[str, str]:
        return {
            "target": self.target,
            "targetBackend": self.target_backend,
            "retiring": json.dumps(list(self.retiring)),
            "phase": self.phase.value,
            "signer": self.signer,
            "signerBackend": self.signer_backend,
            "since": self.since.isoformat(),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> SwitchState:
        return cls(
            target=data["target"],
            target_backend=data["targetBackend"],
            retiring=tuple(json.loads(data["retiring"])),
            phase=Phase(data["phase"]),
            signer=data["signer"],
            signer_backend=data["signerBackend"],
            since=datetime.fromisoformat(data["since"]),
        )


@dataclass(frozen=True)
class MeshTrust:
    """What the generation of a mesh's proxies needs: who signs, and what every proxy trusts."""

    signing_ca: CertificateAuthority
    bundle_pem: str  # the trusted CA certificates, concatenated PEM
    phase: Phase
    backend: str  # the enabled backend


@dataclass(frozen=True)
class IssuedIdentity:
    certificate: WorkloadCertificate
    ca_fingerprint: bytes
    services: tuple[str, ...]
    tags: tuple[tuple[str, tuple[str, ...]], ...]
    lifetime: timedelta
    generation: int
    issued_at: datetime


def _bundle(*pems: str) -> str:
    return "".join(p if p.endswith("\n") else p + "\n" for p in dict.fromkeys(pems))


class WorkloadCertificates:
    """Issues and rotates the certificate of each data plane (keyed by node id), and runs CA switches.

    ``acked`` tells which SDS version each proxy has ACKed (see :func:`sds_acks`); without it a switch's
    phases last the whole grace period.
    """

    def __init__(
        self,
        acked: AckedSecrets | None = None,
        *,
        switch_grace: timedelta = DEFAULT_SWITCH_GRACE,
        switch_settle: timedelta = DEFAULT_SWITCH_SETTLE,
    ) -> None:
        self._issued: dict[str, IssuedIdentity] = {}
        self._acked = acked
        self._grace = switch_grace
        self._settle = switch_settle
        self._cas: dict[str, CertificateAuthority] = {}  # every CA loaded, by certificate PEM
        self._provided: dict[tuple[str, str], CertificateAuthority] = {}  # (mesh, backend JSON) -> CA
        self._baselines: dict[str, dict[str, str | None]] = {}  # mesh -> SDS versions when its phase began
        self._switching: dict[str, datetime] = {}  # mesh -> when its current phase began

    # -- mesh CAs and trust ---------------------------------------------------------------------------------
    async def backend_ca(self, store: ResourceStore, mesh: str, backend: CaBackend) -> CertificateAuthority:
        """The CA of a backend: built-in (created in the store the first time) or provided (read once per
        backend configuration; ValueError naming the field if it is unreadable or not a CA of the mesh)."""
        if backend.type is CaBackendType.BUILTIN:
            ca = await ensure_mesh_ca(store, mesh, backend.name)
        else:
            key = (mesh, json.dumps(backend.model_dump(mode="json", by_alias=True), sort_keys=True))
            cached = self._provided.get(key)
            if cached is None:
                from isthmus.resources.provided_ca import load_conf_ca

                conf = backend.provided_conf
                try:
                    cached = await asyncio.to_thread(load_conf_ca, conf, mesh)
                except ValueError as exc:
                    raise ValueError(f"mesh {mesh!r}, CA backend {backend.name!r}: {exc}") from None
                self._provided[key] = cached
            ca = cached
        self._cas.setdefault(ca.cert_pem.decode(), ca)
        return ca

    async def mesh_trust(
        self,
        store: ResourceStore,
        mesh: str,
        spec: MeshSpec,
        sds_versions: Mapping[str, str | None],
        now: datetime | None = None,
    ) -> MeshTrust | None:
        """The signing CA and trust bundle of ``mesh`` (None when mTLS is off), advancing a CA switch.

        ``sds_versions`` maps the node id of every proxy of the mesh to the SDS version of its current
        configuration (None if it has none, e.g. its generation failed). Call it before regenerating the mesh's
        proxies, with what they were last given.
        """
        now = now or datetime.now(UTC)
        backend = spec.enabled_backend
        name = trust_secret_name(mesh)
        record = await store.get(SECRET_TYPE, mesh, name)
        if backend is None:
            self._switching.pop(mesh, None)
            self._baselines.pop(mesh, None)
            if record is not None:
                try:
                    await store.write([Op(OpKind.DELETE, SECRET_TYPE, mesh, name)])
                except NotFound:
                    pass
            return None
        target_ca = await self.backend_ca(store, mesh, backend)
        target = target_ca.cert_pem.decode()
        state = SwitchState.from_data(record.spec["data"]) if record is not None else None
        new_state = self._advance(mesh, state, target, backend.name, sds_versions, now)
        if new_state != state:
            if state is not None and (state.phase, state.target) != (new_state.phase, new_state.target):
                log.info(
                    "mesh %r: CA switch to backend %r, phase %s", mesh, backend.name, new_state.phase.value
                )
            await store.write(
                [Op(OpKind.UPSERT, SECRET_TYPE, mesh, name, spec={"data": new_state.to_data()})]
            )
        if new_state.phase is Phase.STEADY:
            self._switching.pop(mesh, None)
            self._baselines.pop(mesh, None)
        else:
            self._switching[mesh] = new_state.since
        signing = target_ca
        if new_state.phase is Phase.TRUST:
            signing = await self._load_signer(store, mesh, spec, new_state) or target_ca
        return MeshTrust(
            signing_ca=signing,
            bundle_pem=_bundle(*new_state.retiring, new_state.target),
            phase=new_state.phase,
            backend=backend.name,
        )

    def _advance(
        self,
        mesh: str,
        state: SwitchState | None,
        target: str,
        backend: str,
        sds_versions: Mapping[str, str | None],
        now: datetime,
    ) -> SwitchState:
        if state is None:
            return SwitchState(target, backend, (), Phase.STEADY, target, backend, now)
        if state.target != target:  # the enabled CA changed: start (or restart) a switch
            if state.phase is Phase.TRUST:  # proxies still hold certificates of the trust phase's signer
                signer, signer_backend = state.signer, state.signer_backend
            else:
                signer, signer_backend = state.target, state.target_backend
            retiring = tuple(p for p in dict.fromkeys((*state.retiring, state.target)) if p != target)
            self._baselines[mesh] = dict(sds_versions)
            return SwitchState(target, backend, retiring, Phase.TRUST, signer, signer_backend, now)
        if state.target_backend != backend:  # the same CA under another backend name
            state = replace(state, target_backend=backend)
        if state.phase is Phase.STEADY:
            return state
        if mesh not in self._baselines:  # first look at this phase in this process (a restart)
            self._baselines[mesh] = dict(sds_versions)
            return state
        if not self._phase_done(mesh, sds_versions, state.since, now):
            return state
        self._baselines[mesh] = dict(sds_versions)
        if state.phase is Phase.TRUST:
            return replace(state, phase=Phase.REISSUE, since=now)
        return SwitchState(target, backend, (), Phase.STEADY, target, backend, now)

    def _phase_done(
        self, mesh: str, sds_versions: Mapping[str, str | None], since: datetime, now: datetime
    ) -> bool:
        """Every proxy got a configuration generated in this phase and ACKed it (and the phase has lasted the
        settle time), or the grace period is over."""
        if now - since >= self._grace:
            return True
        if self._acked is None or now - since < self._settle:
            return False
        baseline = self._baselines.get(mesh, {})
        for nid, version in sds_versions.items():
            if version is None or (nid in baseline and baseline[nid] == version):
                return False  # no configuration of this phase yet
            if self._acked(nid) != version:
                return False
        return True

    async def _load_signer(
        self, store: ResourceStore, mesh: str, spec: MeshSpec, state: SwitchState
    ) -> CertificateAuthority | None:
        """The CA that signed before the switch, if its key is still at hand (memory, a built-in CA in the
        store, or a backend still listed in the mesh)."""
        known = self._cas.get(state.signer)
        if known is not None:
            return known
        candidates = [b for b in (spec.mtls.backends if spec.mtls else []) if b.name == state.signer_backend]
        record = await store.get(SECRET_TYPE, mesh, ca_secret_name(mesh, state.signer_backend))
        if record is not None and record.spec["data"]["cert"] == state.signer:
            ca = CertificateAuthority(
                cert_pem=record.spec["data"]["cert"].encode(), key_pem=record.spec["data"]["key"].encode()
            )
            self._cas[state.signer] = ca
            return ca
        for backend in candidates:
            if backend.type is CaBackendType.PROVIDED:
                try:
                    ca = await self.backend_ca(store, mesh, backend)
                except ValueError:
                    continue
                if ca.cert_pem.decode() == state.signer:
                    return ca
        return None

    def switch_in_progress(self, mesh: str) -> bool:
        return mesh in self._switching

    def forget_mesh(self, mesh: str) -> None:
        """The mesh is gone: stop watching its switch (its records went with it)."""
        self._switching.pop(mesh, None)
        self._baselines.pop(mesh, None)
        self._provided = {k: v for k, v in self._provided.items() if k[0] != mesh}

    # -- workload certificates ------------------------------------------------------------------------------
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
        """When the reconciler must look again without an event: the earliest certificate reaching 80% of its
        lifetime, or soon when a CA switch waits for ACKs."""
        times = [i.certificate.rotation_due for i in self._issued.values()]
        if self._switching:
            times.append(datetime.now(UTC) + SWITCH_POLL)
        return min(times) if times else None
