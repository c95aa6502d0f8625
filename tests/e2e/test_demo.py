"""The README's first command: `isthmus demo` brings up a mesh on SQLite and traffic flows over mTLS."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS


def test_demo_check_passes_and_keeps_its_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    cmd = [
        *ISTHMUS, "demo", "--check", "--data-dir", str(data_dir),
        "--api-port", str(free_port()), "--xds-port", str(free_port()), "--api-tls-port", str(free_port()),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "answered backend-" in proc.stdout  # web reached a backend through its sidecar
    assert "a Deny permission answered 403" in proc.stdout
    assert (data_dir / "isthmus.db").stat().st_size > 0  # the embedded SQLite store was used
    # Sidecars ran with tokens and verified the control plane's TLS certificate.
    assert (data_dir / "tls" / "ca.crt").exists() and len(list((data_dir / "tokens").iterdir())) == 3
    for name in ("web-1", "backend-1", "backend-2"):
        args = (data_dir / "work" / name / "bootstrap.json").read_text()
        assert "trusted_ca" in args and "authorization" in args
