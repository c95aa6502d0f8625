"""The gateway's store on a real SQLite store: atomic writes, indexes rebuilt from the records."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from isthmus.gateway.errors import KongError
from isthmus.gateway.store import GatewayStore
from isthmus.store.sql import SqlStore


def _cert(name: str, ca: bool) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def self_signed(name: str) -> tuple[str, str]:
    return _cert(name, ca=False)


def ca_pem() -> str:
    return _cert("Test CA", ca=True)[0]


async def test_failed_batch_leaves_nothing_and_restart_rebuilds_indexes(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    try:
        gateway = GatewayStore(store)
        cert, key = self_signed("a.example")
        await gateway.create("default", "certificates", {"cert": cert, "key": key, "snis": ["a.example"]})
        other, other_key = self_signed("b.example")
        with pytest.raises(KongError) as info:  # the second SNI name is taken: nothing of this write stays
            await gateway.create("default", "certificates", {"cert": other, "key": other_key, "snis": ["b.example", "a.example"]})  # fmt: skip
        assert info.value.status == 409
        assert len((await store.list("KongCertificate")).items) == 1
        assert len((await store.list("KongSni")).items) == 1
        service = await gateway.create("default", "services", {"name": "s", "host": "h"})
        await gateway.create("default", "routes", {"paths": ["/"], "service": "s"})
        fresh = GatewayStore(store)
        with pytest.raises(KongError) as refused:
            await fresh.delete("default", "services", "s")
        assert refused.value.code == 4
        assert (await fresh.get("default", "services", service["id"]))["name"] == "s"
        records = (await store.list("KongService")).items
        assert [r.mesh for r in records] == ["kong:default"]
    finally:
        await store.close()


async def test_patch_merges_a_plugin_config_as_kong_does(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    try:
        gateway = GatewayStore(store)
        config = {"minute": 5, "hour": 100, "policy": "local"}
        plugin = await gateway.create("default", "plugins", {"name": "rate-limiting", "config": config})
        patched = await gateway.update("default", "plugins", plugin["id"], {"config": {"minute": 7}})
        assert patched["config"]["minute"] == 7 and patched["config"]["hour"] == 100
        stored = await gateway.get("default", "plugins", plugin["id"])
        assert (stored["config"]["minute"], stored["config"]["hour"], stored["config"]["policy"]) == (
            7,
            100,
            "local",
        )
        # a field outside config is replaced, the config kept
        disabled = await gateway.update("default", "plugins", plugin["id"], {"enabled": False})
        assert disabled["enabled"] is False and disabled["config"]["minute"] == 7
    finally:
        await store.close()
