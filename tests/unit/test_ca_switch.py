"""Changing a mesh's CA: the phases of the switch (trust both, re-issue, drop the old CA), driven by real ADS
insights and a real store; the state survives a control-plane restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from isthmus.cp.certificates import (
    SECRET_TYPE,
    MeshTrust,
    Phase,
    WorkloadCertificates,
    sds_acks,
    trust_secret_name,
)
from isthmus.cp.insights import Insights
from isthmus.pki.ca import generate_ca
from isthmus.resources.mesh import MeshSpec
from isthmus.store.base import ResourceStore
from isthmus.store.memory import MemoryStore
from isthmus.xds import types

MESH = "default"
NODES = (f"{MESH}.a", f"{MESH}.b")


def mesh_spec(enabled: str | None, *extra: dict[str, Any]) -> MeshSpec:
    backends = [{"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}, *extra]
    return MeshSpec.model_validate({"mtls": {"enabledBackend": enabled, "backends": backends}})


def bundle_of(trust: MeshTrust) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(trust.bundle_pem.encode())


@pytest.fixture
async def store() -> AsyncIterator[ResourceStore]:
    s = MemoryStore()
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def insights() -> Insights:
    ins = Insights()
    for i, nid in enumerate(NODES):
        ins.on_stream_open(i, nid, None)
    return ins


def ack(insights: Insights, version: str) -> None:
    for i, nid in enumerate(NODES):
        insights.on_ack(i, nid, types.SECRET, version)


async def test_a_switch_trusts_both_then_reissues_then_drops_the_old_ca(
    store: ResourceStore, insights: Insights
) -> None:
    certs = WorkloadCertificates(sds_acks(insights), switch_settle=timedelta(0))
    steady = await certs.mesh_trust(store, MESH, mesh_spec("ca-1"), {})
    assert steady is not None and steady.phase is Phase.STEADY
    ca1 = steady.signing_ca
    assert bundle_of(steady) == [ca1.certificate]

    v1 = dict.fromkeys(NODES, "v1")
    ack(insights, "v1")
    trust = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v1)
    assert trust is not None and trust.phase is Phase.TRUST
    assert (
        trust.signing_ca == ca1
    )  # certificates keep coming from the old CA until everyone trusts the new one
    assert len(bundle_of(trust)) == 2 and ca1.certificate in bundle_of(trust)
    assert certs.switch_in_progress(MESH) and certs.next_rotation() is not None

    # not regenerated yet (same versions), then regenerated but not ACKed: the phase holds
    assert (await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v1)).phase is Phase.TRUST  # type: ignore[union-attr]
    v2 = dict.fromkeys(NODES, "v2")
    assert (await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v2)).phase is Phase.TRUST  # type: ignore[union-attr]
    insights.on_ack(0, NODES[0], types.SECRET, "v2")
    assert (await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v2)).phase is Phase.TRUST  # type: ignore[union-attr]
    ack(insights, "v2")
    reissue = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v2)
    assert reissue is not None and reissue.phase is Phase.REISSUE
    ca2 = reissue.signing_ca
    assert ca2 != ca1 and reissue.bundle_pem == trust.bundle_pem

    # a proxy whose generation failed (None) holds the phase
    v3 = {NODES[0]: "v3", NODES[1]: None}
    ack(insights, "v3")
    assert (await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v3)).phase is Phase.REISSUE  # type: ignore[union-attr]
    v3 = dict.fromkeys(NODES, "v3")
    done = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v3)
    assert done is not None and done.phase is Phase.STEADY
    assert bundle_of(done) == [ca2.certificate] and done.signing_ca == ca2
    assert not certs.switch_in_progress(MESH)


async def test_the_grace_period_ends_a_phase_without_acks(store: ResourceStore) -> None:
    certs = WorkloadCertificates(None, switch_grace=timedelta(minutes=5))
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    await certs.mesh_trust(store, MESH, mesh_spec("ca-1"), {}, now=t0)
    versions = {NODES[0]: "v1"}
    trust = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), versions, now=t0)
    assert trust is not None and trust.phase is Phase.TRUST
    later = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), versions, now=t0 + timedelta(minutes=4))
    assert later is not None and later.phase is Phase.TRUST
    reissue = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), versions, now=t0 + timedelta(minutes=5))
    assert reissue is not None and reissue.phase is Phase.REISSUE
    end = t0 + timedelta(minutes=10)
    done = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), versions, now=end)
    assert done is not None and done.phase is Phase.STEADY and len(bundle_of(done)) == 1


async def test_a_restart_in_the_middle_of_a_switch_resumes_it(
    store: ResourceStore, insights: Insights
) -> None:
    before = WorkloadCertificates(sds_acks(insights), switch_settle=timedelta(0))
    first = await before.mesh_trust(store, MESH, mesh_spec("ca-1"), {})
    trust = await before.mesh_trust(store, MESH, mesh_spec("ca-2"), dict.fromkeys(NODES, "v1"))
    assert first is not None and trust is not None
    record = await store.get(SECRET_TYPE, MESH, trust_secret_name(MESH))
    assert record is not None and "PRIVATE KEY" not in str(record.spec)  # certificates only

    after = WorkloadCertificates(sds_acks(Insights()))  # a new process: nothing in memory, no ACKs yet
    resumed = await after.mesh_trust(store, MESH, mesh_spec("ca-2"), {})
    assert resumed is not None and resumed.phase is Phase.TRUST
    assert resumed.bundle_pem == trust.bundle_pem
    assert resumed.signing_ca.cert_pem == first.signing_ca.cert_pem  # the old CA, loaded from the store


async def test_changing_the_ca_again_mid_switch_keeps_every_ca_in_the_bundle(
    store: ResourceStore, insights: Insights
) -> None:
    certs = WorkloadCertificates(sds_acks(insights), switch_settle=timedelta(0))
    await certs.mesh_trust(store, MESH, mesh_spec("ca-1"), {})
    await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), dict.fromkeys(NODES, "v1"))
    ack(insights, "v2")
    reissue = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), dict.fromkeys(NODES, "v2"))
    assert reissue is not None and reissue.phase is Phase.REISSUE
    ca3 = generate_ca(MESH, backend="ca-3")
    provided = {
        "name": "ca-3",
        "type": "provided",
        "conf": {
            "cert": {"inlineString": ca3.cert_pem.decode()},
            "key": {"inlineString": ca3.key_pem.decode()},
        },
    }
    again = await certs.mesh_trust(store, MESH, mesh_spec("ca-3", provided), dict.fromkeys(NODES, "v3"))
    assert again is not None and again.phase is Phase.TRUST
    assert len(bundle_of(again)) == 3  # ca-1 and ca-2 certificates may both still be presented
    assert again.signing_ca == reissue.signing_ca  # ca-2 signs until everyone trusts ca-3


async def test_turning_mtls_off_forgets_the_switch(store: ResourceStore, insights: Insights) -> None:
    certs = WorkloadCertificates(sds_acks(insights), switch_settle=timedelta(0))
    await certs.mesh_trust(store, MESH, mesh_spec("ca-1"), {})
    await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), {})
    assert certs.switch_in_progress(MESH)
    assert await certs.mesh_trust(store, MESH, mesh_spec(None), {}) is None
    assert not certs.switch_in_progress(MESH)
    assert await store.get(SECRET_TYPE, MESH, trust_secret_name(MESH)) is None
    steady = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), {})
    assert steady is not None and steady.phase is Phase.STEADY


async def test_an_unreadable_provided_ca_names_the_backend_and_the_field(store: ResourceStore) -> None:
    certs = WorkloadCertificates()
    provided = {
        "name": "ext",
        "type": "provided",
        "conf": {"cert": {"file": "/nonexistent/ca.crt"}, "key": {"file": "/nonexistent/ca.key"}},
    }
    with pytest.raises(
        ValueError, match=r"CA backend 'ext': conf\.cert\.file: cannot read '/nonexistent/ca.crt'"
    ):
        await certs.mesh_trust(store, MESH, mesh_spec("ext", provided), {})


async def test_a_phase_lasts_at_least_the_settle_time(store: ResourceStore, insights: Insights) -> None:
    certs = WorkloadCertificates(sds_acks(insights), switch_settle=timedelta(seconds=1))
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    await certs.mesh_trust(store, MESH, mesh_spec("ca-1"), {}, now=t0)
    await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), dict.fromkeys(NODES, "v1"), now=t0)
    ack(insights, "v2")
    v2 = dict.fromkeys(NODES, "v2")
    early = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v2, now=t0 + timedelta(milliseconds=500))
    assert early is not None and early.phase is Phase.TRUST  # everyone ACKed, but Envoy's workers may lag
    settled = await certs.mesh_trust(store, MESH, mesh_spec("ca-2"), v2, now=t0 + timedelta(seconds=1))
    assert settled is not None and settled.phase is Phase.REISSUE
