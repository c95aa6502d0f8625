"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import ControlPlane


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``isthmus cp run --store memory`` on free ports; yields its REST API URL once ``GET /`` answers."""
    plane = ControlPlane(tmp_path_factory.mktemp("cp"), store="memory")
    try:
        plane.start()
    except AssertionError as exc:
        plane.stop()
        log = plane.proc.log() if plane.proc else ""
        raise AssertionError(f"{exc}\n--- control plane log ---\n{log}") from None
    try:
        yield plane.url
    finally:
        plane.stop()
        plane.http.close()
