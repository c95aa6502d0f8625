"""Transparent proxying for ``isthmus dp run --transparent-proxy``: iptables rules in the data plane's network
namespace that send the application's TCP through Envoy, as ``kumactl install transparent-proxy`` does for Kuma.

- Outbound: TCP the application opens goes to Envoy's outbound catch-all (``redirectPortOutbound``, default
  15001), which hands it to the listener of its original destination (a VIP, ``<service>.mesh``) or passes it
  through (:mod:`isthmus.xds.translate.transparent`).
- Inbound: TCP arriving from elsewhere goes to the inbound catch-all (``redirectPortInbound``, default 15006),
  which hands it to the Dataplane's inbound listener for its port (mTLS, permissions).
- Envoy runs as a dedicated user (Kuma's uid 5678 by default) and its own connections are never redirected
  (``-m owner --uid-owner``), nor is traffic to 127.0.0.1, from ``127.0.0.6`` (the inbound passthrough's source)
  or between local processes over loopback. Envoy's own connections to another local address go to its inbound
  catch-all (a service calling itself through the mesh).
- DNS (``--redirect-dns``): UDP to port 53 from anyone but Envoy goes to the data plane's DNS (Envoy's DNS filter
  on 127.0.0.1:``--dns-port``), which answers the mesh's names and asks the host's resolvers for the rest.

The rules live in chains of their own (``ISTHMUS_*``) jumped to from ``PREROUTING`` and ``OUTPUT`` of the nat
table; installing first removes any left by an agent that did not stop cleanly, and the agent removes them when
it stops. :func:`install_rules` / :func:`remove_rules` are pure: the rules as argument lists for ``iptables``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_UID = 5678  # Kuma's kuma-dp user
DEFAULT_DNS_PORT = 15053  # Kuma's DNS port of the data plane
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"
LOOPBACK = "127.0.0.1/32"

INBOUND = "ISTHMUS_INBOUND"
INBOUND_REDIRECT = "ISTHMUS_INBOUND_REDIRECT"
OUTBOUND = "ISTHMUS_OUTBOUND"
OUTBOUND_REDIRECT = "ISTHMUS_OUTBOUND_REDIRECT"
DNS = "ISTHMUS_DNS"
CHAINS = (INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTBOUND_REDIRECT, DNS)
NAT = ["-t", "nat"]


class TransparentProxyError(Exception):
    """The rules cannot be installed; ``str()`` is one readable line."""


@dataclass(frozen=True)
class Redirect:
    """What the rules redirect where, and whose traffic they leave alone."""

    uid: int  # Envoy's user: its connections are never redirected
    inbound_port: int = 15006
    outbound_port: int = 15001
    dns_port: int | None = None  # redirect UDP port 53 there (--redirect-dns)
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()


def _jumps(redirect: Redirect) -> list[list[str]]:
    """The rules of the built-in chains, each jumping to one of ours."""
    jumps = [
        ["PREROUTING", "-p", "tcp", "-j", INBOUND],
        ["OUTPUT", "-p", "tcp", "-j", OUTBOUND],
    ]
    if redirect.dns_port is not None:
        jumps.append(["OUTPUT", "-p", "udp", "--dport", "53", "-j", DNS])
    return jumps


def install_rules(redirect: Redirect) -> list[list[str]]:
    """The ``iptables`` argument lists that install the redirection, in order (chains filled before the jumps
    into them, so the switch happens at once)."""
    uid = str(redirect.uid)
    rules: list[list[str]] = [[*NAT, "-N", chain] for chain in CHAINS]
    # inbound: everything but the excluded ports to the inbound catch-all
    for port in redirect.exclude_inbound_ports:
        rules.append([*NAT, "-A", INBOUND, "-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    rules.append([*NAT, "-A", INBOUND, "-p", "tcp", "-j", INBOUND_REDIRECT])
    rules.append(
        [
            *NAT,
            "-A",
            INBOUND_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(redirect.inbound_port),
        ]
    )
    # outbound, in Kuma's order
    out = [*NAT, "-A", OUTBOUND]
    rules += [
        # the inbound passthrough's connections to the application
        [*out, "-s", f"{INBOUND_PASSTHROUGH_SOURCE}/32", "-o", "lo", "-j", "RETURN"],
        # Envoy to a local address other than 127.0.0.1: into the inbound catch-all (a service calling itself)
        [*out, "!", "-d", LOOPBACK, "-o", "lo", "-m", "owner", "--uid-owner", uid, "-j", INBOUND_REDIRECT],
        # local processes talking over loopback
        [*out, "-o", "lo", "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN"],
        # Envoy's own connections (upstreams, the control plane)
        [*out, "-m", "owner", "--uid-owner", uid, "-j", "RETURN"],
        [*out, "-d", LOOPBACK, "-j", "RETURN"],
    ]
    for port in redirect.exclude_outbound_ports:
        rules.append([*out, "-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    rules.append([*out, "-j", OUTBOUND_REDIRECT])
    rules.append(
        [
            *NAT,
            "-A",
            OUTBOUND_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(redirect.outbound_port),
        ]
    )
    if redirect.dns_port is not None:
        rules += [
            [
                *NAT,
                "-A",
                DNS,
                "-m",
                "owner",
                "--uid-owner",
                uid,
                "-j",
                "RETURN",
            ],  # Envoy asks the real resolvers
            [*NAT, "-A", DNS, "-p", "udp", "-j", "REDIRECT", "--to-ports", str(redirect.dns_port)],
        ]
    rules += [[*NAT, "-A", *jump] for jump in _jumps(redirect)]
    return rules


def remove_rules() -> list[list[str]]:
    """The ``iptables`` argument lists that remove every rule and chain :func:`install_rules` may have added,
    whatever its settings (each may fail harmlessly when already gone)."""
    everything = Redirect(uid=0, dns_port=DEFAULT_DNS_PORT)
    rules = [[*NAT, "-D", *jump] for jump in _jumps(everything)]
    rules += [[*NAT, "-F", chain] for chain in CHAINS]
    rules += [[*NAT, "-X", chain] for chain in CHAINS]
    return rules


def resolve_user(user: str) -> tuple[int, int]:
    """(uid, gid) of ``--transparent-proxy-user``: a user name, or a uid (its gid from the user database when it
    has an entry there, else the same number, as Kuma's ``useradd -u 5678 -U kuma-dp`` makes)."""
    if user.isdigit():
        uid = int(user)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise TransparentProxyError(
            f"--transparent-proxy-user {user!r}: no such user (give a uid, e.g. {DEFAULT_UID})"
        ) from None
    return entry.pw_uid, entry.pw_gid


def check_can_redirect(uid: int) -> str:
    """The path of ``iptables``; raise when the rules cannot be installed here."""
    if os.geteuid() != 0:
        raise TransparentProxyError(
            "--transparent-proxy needs root: the agent installs iptables rules in the data plane's network "
            "namespace (and runs Envoy as its own user)"
        )
    if uid == 0:
        raise TransparentProxyError(
            "--transparent-proxy-user: Envoy must run as a user of its own, not root (its traffic is told "
            "apart from the application's by its uid)"
        )
    binary = shutil.which("iptables")
    if binary is None:
        raise TransparentProxyError("--transparent-proxy needs the iptables command, which is not installed")
    return binary


async def _iptables(binary: str, args: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-w",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, " ".join(out.decode(errors="replace").split())


async def remove(binary: str) -> None:
    """Remove the rules (best effort: a rule or chain already gone is fine)."""
    for args in remove_rules():
        await _iptables(binary, args)


async def install(binary: str, redirect: Redirect) -> None:
    """Install the rules, after removing any left behind; on a failure remove what was installed and raise."""
    await remove(binary)
    for args in install_rules(redirect):
        code, output = await _iptables(binary, args)
        if code != 0:
            await remove(binary)
            raise TransparentProxyError(
                f"--transparent-proxy: iptables {' '.join(args)} failed: {output or f'exit code {code}'}"
            )
    log.info(
        "transparent proxy: TCP out -> :%d, in -> :%d%s; Envoy's uid %d excluded",
        redirect.outbound_port,
        redirect.inbound_port,
        f", DNS -> :{redirect.dns_port}" if redirect.dns_port is not None else "",
        redirect.uid,
    )


@contextlib.asynccontextmanager
async def redirected(binary: str | None, redirect: Redirect | None) -> AsyncIterator[None]:
    """The rules installed for the body, removed after it (also when it fails or is cancelled). A no-op without
    a redirect."""
    if binary is None or redirect is None:
        yield
        return
    await install(binary, redirect)
    try:
        yield
    finally:
        # shielded: a cancelled agent must still take its rules away, or the namespace's traffic stays broken
        removal = asyncio.ensure_future(remove(binary))
        try:
            await asyncio.shield(removal)
        except asyncio.CancelledError:
            await removal
            raise
        log.info("transparent proxy: iptables rules removed")
