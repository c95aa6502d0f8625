"""Server names for cross-zone traffic: the client's sidecar sets one on its upstream TLS, a zone ingress routes the
connection on it without terminating TLS (Kuma's formats, so the names read the same in both).

* ``kuma.io/service`` destinations: ``<service>{mesh=<mesh>[,<tag>=<value>...]}`` (tags sorted, the mesh a tag);
* MeshService / MeshExternalService / MeshMultiZoneService destinations:
  ``a<16 hex of FNV-1a 64>.<name>.<port>.<mesh>.<ms|mes|mzms>`` with name and mesh cut to 63 characters (an ``x``
  marks a cut) so that every label is a DNS label.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVICE_TAG = "kuma.io/service"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
KIND_SUFFIX = {"MeshService": "ms", "MeshExternalService": "mes", "MeshMultiZoneService": "mzms"}


def legacy_sni(service: str, mesh: str, tags: Mapping[str, str] | None = None) -> str:
    """The SNI of a ``kuma.io/service`` destination (with optional subset tags)."""
    pairs = {k: v for k, v in (tags or {}).items() if k != SERVICE_TAG}
    pairs["mesh"] = mesh
    return service + "{" + ",".join(f"{k}={v}" for k, v in sorted(pairs.items())) + "}"


def fnv64a(data: bytes) -> int:
    value = _FNV_OFFSET
    for byte in data:
        value ^= byte
        value = (value * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


def _label(text: str) -> str:
    return text if len(text) <= 63 else text[:62] + "x"


def resource_sni(kind: str, name: str, mesh: str, port: int) -> str:
    """The SNI of a MeshService (``kind``) port, as both the client and the ingress compute it."""
    suffix = KIND_SUFFIX[kind]
    digest = fnv64a("\x00".join((name, mesh, suffix, str(port))).encode())
    return f"a{digest:016x}.{_label(name)}.{port}.{_label(mesh)}.{suffix}"
