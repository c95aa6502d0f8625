"""A transparent proxy's part of the IR (Kuma's ``networking.transparentProxying``).

The agent's iptables rules (:mod:`isthmus.dp.transparent_proxy`) send the application's outbound TCP to
``redirectPortOutbound`` and inbound TCP to ``redirectPortInbound``. There two catch-all listeners with
``use_original_dst`` hand each connection to the listener of its original destination: the VIP listeners the
mesh's names give the proxy (:mod:`isthmus.names.outbounds`) and the inbounds, which then do not bind a socket
of their own. A connection whose destination has no listener goes on to that destination (``passthrough``, Kuma's
``Mesh.networking.outbound.passthrough``, default true) or is closed; an inbound one always goes on to the
application's port, from ``127.0.0.6`` so that the rules let it through.

Explicit outbounds on loopback (``networking.outbound`` without a VIP) keep their own socket: traffic to
127.0.0.1 is never redirected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from isthmus.names.vips import is_vip

if TYPE_CHECKING:
    from isthmus.context.mesh_context import MeshContext
    from isthmus.ir.model import ProxyIR
    from isthmus.resources.registry import Resource

INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"  # Kuma's: the rules never redirect connections from this address


@dataclass(frozen=True)
class TransparentProxy:
    outbound_port: int  # redirectPortOutbound: the outbound catch-all listener
    inbound_port: int  # redirectPortInbound: the inbound catch-all listener
    passthrough: bool = True  # unknown outbound destinations: forwarded (True) or closed


def apply(ir: ProxyIR, ctx: MeshContext, dp: Resource) -> ProxyIR:
    """The IR of a proxy whose Dataplane declares ``transparentProxying``: the catch-all listeners, and VIP
    outbounds and inbounds reached by original destination (``bind_to_port: false``). Other proxies unchanged."""
    from isthmus.resources.dataplane import DataplaneSpec

    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    tp = spec.networking.transparent_proxying
    if tp is None:
        return ir
    net = spec.networking
    declared = {(inbound.address or net.address, inbound.port) for inbound in net.inbound}
    return replace(
        ir,
        transparent=TransparentProxy(tp.outbound_port, tp.inbound_port, ctx.spec.passthrough),
        outbounds=tuple(replace(o, bind=False) if is_vip(o.address) else o for o in ir.outbounds),
        inbounds=tuple(replace(i, bind=False) if (i.address, i.port) in declared else i for i in ir.inbounds),
    )
