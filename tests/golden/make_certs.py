"""Regenerate the fixed certificates used by golden tests (run by hand; outputs are committed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from isthmus.pki.ca import generate_ca
from isthmus.pki.issuer import issue_workload_certificate

HERE = Path(__file__).parent / "certs"

if __name__ == "__main__":
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ca = generate_ca("default", backend="ca-1", validity=timedelta(days=365 * 50), now=now)
    leaf = issue_workload_certificate(
        ca, mesh="default", services=["web"], tags=None, lifetime=timedelta(days=365 * 40), now=now
    )
    HERE.mkdir(exist_ok=True)
    (HERE / "ca.pem").write_bytes(ca.cert_pem)
    (HERE / "cert.pem").write_bytes(leaf.cert_pem)
    (HERE / "key.pem").write_bytes(leaf.key_pem)
