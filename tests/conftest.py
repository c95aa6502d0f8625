"""Shared test options and fixtures."""

from __future__ import annotations

import itertools
import os
import socket

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False, help="rewrite golden files from current output"
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


# Ports for the processes the tests start: each pytest-xdist worker takes them from its own block below the
# kernel's ephemeral range (32768+), so two workers never pick the same port between choosing it and the
# process binding it, and no outgoing connection's local port takes it meanwhile.
PORT_BLOCK = 1500
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_INDEX = int(_WORKER[2:]) % 8 if _WORKER[2:].isdigit() else 8
_FIRST = 18000 + _INDEX * PORT_BLOCK
_NEXT = itertools.cycle(range(_FIRST, _FIRST + PORT_BLOCK))


def free_port() -> int:
    """A loopback TCP port nobody holds now, from this worker's block (tried in turn, wrapping around)."""
    for _ in range(PORT_BLOCK):
        port = next(_NEXT)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_FIRST}..{_FIRST + PORT_BLOCK - 1}")
