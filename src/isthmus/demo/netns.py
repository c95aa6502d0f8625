"""Network namespaces for zones (the multi-zone demo, its end-to-end test and ``bench.multizone``).

Each zone is a network namespace of its own with one veth pair: one end, with the zone's address
``<base>.<n>/24``, inside the namespace (its default route is the host), the other end on a bridge in the host's
namespace that holds ``<base>.1``. Zones reach each other, and the host reaches them, only over that bridge, at
those addresses; each zone has its own loopback and its own port space.

Creating namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): :func:`can_create` says whether this process
may. Everything is created by ``ip`` and removed by :meth:`Network.delete` (also after a partial creation).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class NetworkError(RuntimeError):
    """A namespace, link or address could not be created."""


def can_create() -> bool:
    """Root with ``ip`` on the PATH: what :meth:`Network.create` needs."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@dataclass
class Zone:
    name: str
    netns: str
    address: str  # the zone's address on the bridge
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the zone's namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` on a thread that lives in the zone's namespace (sockets it opens are the zone's:
        ``127.0.0.1`` there is the zone's loopback)."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """:meth:`run` without waiting: the call's future (calls run one at a time, in order)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{self.name}", initializer=_enter, initargs=(self.netns,)
            )
        return self._executor.submit(fn, *args, **kwargs)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise NetworkError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class Network:
    """A bridge ``<prefix>br`` holding ``<base>.1`` and one namespace ``<prefix>-<zone>`` per zone.

    ``prefix`` is at most 8 characters (Linux's link names are at most 15); ``base`` the first three octets of a
    private /24 (``10.213.0``)."""

    def __init__(self, prefix: str, base: str, zones: Sequence[str]) -> None:
        if not 0 < len(prefix) <= 8:
            raise ValueError("prefix: 1 to 8 characters")
        self.prefix = prefix
        self.base = base
        self.bridge = f"{prefix}br"
        self.host_address = f"{base}.1"
        self.zones = {
            name: Zone(name, f"{prefix}-{name}", f"{base}.{index + 2}") for index, name in enumerate(zones)
        }

    def _veth(self, index: int) -> tuple[str, str]:
        return f"{self.prefix}h{index}", f"{self.prefix}z{index}"

    def create(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.delete()
            raise
        return self

    def _create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, zone in enumerate(self.zones.values()):
            host_end, zone_end = self._veth(index)
            _ip("netns", "add", zone.netns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", zone_end)
            _ip("link", "set", host_end, "master", self.bridge, "up")
            _ip("link", "set", zone_end, "netns", zone.netns)
            inside = ("netns", "exec", zone.netns, "ip")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{zone.address}/24", "dev", zone_end)
            _ip(*inside, "link", "set", zone_end, "up")
            _ip(*inside, "route", "add", "default", "via", self.host_address)

    def delete(self) -> None:
        """Remove what :meth:`create` made (what exists of it); processes still in a namespace keep it alive
        until they exit."""
        for index, zone in enumerate(self.zones.values()):
            zone.close()
            _ip("link", "del", self._veth(index)[0], check=False)
            _ip("netns", "del", zone.netns, check=False)
        _ip("link", "del", self.bridge, check=False)
