"""``isthmus cp run`` stops by itself on SIGTERM: every background task (generation, names, gateway, zones,
housekeeping, the UI's scraper) ends with the servers, and the exit code is 0 (not a SIGKILL after the grace)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import ControlPlane

pytestmark = pytest.mark.e2e


def test_sigterm_stops_the_control_plane(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path).start()
    assert cp.http.get("/").status_code == 200
    assert cp.stop() == 0, cp.proc.log() if cp.proc else ""
