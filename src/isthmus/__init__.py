"""Isthmus: a service mesh and API gateway for connecting services across clouds.

The control plane is one pipeline, each stage a package with a pure core:

resources (pydantic models) -> store (memory | SQLite, change events) -> context (indexed, hashed mesh
state) -> ir (per-proxy frozen dataclasses) -> xds.translate (pure IR -> Envoy protobufs) -> xds.snapshot /
xds.cache (content-hashed snapshots) -> xds.server (gRPC ADS).  See docs/architecture.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
