"""Virtual IPs from Kuma's ranges, allocated by the control plane and kept in each resource's status.

One range per kind, shared by every mesh (as Kuma's IPAM): MeshService 241.0.0.0/8, MeshExternalService
242.0.0.0/8, MeshMultiZoneService 243.0.0.0/8. An address already in a resource's status stays (stable across
restarts: the store holds it); a missing, foreign or duplicated one is replaced by the lowest free address,
resources taken in (mesh, name) order, so the outcome does not depend on the order records were read in.
``<kuma.io/service>.mesh`` names get addresses from Kuma's legacy range 240.0.0.0/4, below 241.0.0.0
(:func:`legacy_vip`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator, Mapping

RANGES: dict[str, ipaddress.IPv4Network] = {
    "MeshService": ipaddress.IPv4Network("241.0.0.0/8"),
    "MeshExternalService": ipaddress.IPv4Network("242.0.0.0/8"),
    "MeshMultiZoneService": ipaddress.IPv4Network("243.0.0.0/8"),
}
LEGACY_RANGE = ipaddress.IPv4Network("240.0.0.0/4")
LEGACY_SPAN = ipaddress.IPv4Network("240.0.0.0/8")  # the part of 240/4 that the ranges above leave free
VIP_SPACE = LEGACY_RANGE

Key = tuple[str, str]  # (mesh, name)


class RangeExhausted(RuntimeError):
    pass


def allocate(
    kind: str, current: Mapping[Key, str | None], remembered: Mapping[Key, str] | None = None
) -> dict[Key, str]:
    """The VIP of every resource of ``kind``: ``current`` maps each one to the VIP in its status (or None);
    ``remembered`` holds addresses given earlier in this process (a status a user's write dropped gets its
    address back when it is still free)."""
    network = RANGES[kind]
    out: dict[Key, str] = {}
    used: set[ipaddress.IPv4Address] = set()
    for key in sorted(current):
        ip = _in(current[key], network)
        if ip is not None and ip not in used:
            out[key] = str(ip)
            used.add(ip)
    for key in sorted(current):
        if key in out:
            continue
        ip = _in((remembered or {}).get(key), network)
        if ip is not None and ip not in used:
            out[key] = str(ip)
            used.add(ip)
    free = _free(network, used)
    for key in sorted(current):
        if key not in out:
            ip = next(free, None)
            if ip is None:
                raise RangeExhausted(f"no free address left in {network} for {kind}")
            out[key] = str(ip)
            used.add(ip)
    return out


def _in(value: str | None, network: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if not isinstance(ip, ipaddress.IPv4Address) or ip not in network:
        return None
    if ip in (network.network_address, network.broadcast_address):
        return None
    return ip


def _free(
    network: ipaddress.IPv4Network, used: set[ipaddress.IPv4Address]
) -> Iterator[ipaddress.IPv4Address]:
    for ip in network.hosts():
        if ip not in used:
            yield ip


def legacy_vip(mesh: str, service: str, taken: set[str]) -> str:
    """A stable address for ``<service>.mesh`` in 240.0.0.0/8 (a hash of mesh and service, probing on
    collision); ``taken`` collects the addresses given so far in one table."""
    size = LEGACY_SPAN.num_addresses - 2
    start = int.from_bytes(hashlib.sha256(f"{mesh}/{service}".encode()).digest()[:4], "big") % size
    base = int(LEGACY_SPAN.network_address) + 1
    for i in range(size):
        ip = str(ipaddress.IPv4Address(base + (start + i) % size))
        if ip not in taken:
            taken.add(ip)
            return ip
    raise RangeExhausted(f"no free address left in {LEGACY_SPAN}")


def is_vip(address: str) -> bool:
    """Whether ``address`` is in the mesh's virtual range 240.0.0.0/4 (a listener there binds with freebind)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return isinstance(ip, ipaddress.IPv4Address) and ip in VIP_SPACE
