"""MeshTLS: per inbound, the TLS versions and ciphers peers must use, and Strict or Permissive mTLS.

Only meaningful with mesh mTLS on: an inbound without TLS (mTLS off) is left alone.
"""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, TlsMode
from isthmus.policies.engine import Resolved
from isthmus.policies.meshtls.api import ENVOY_VERSION, RANK, Conf, MeshTLSSpec, Mode
from isthmus.policies.plugin import ToFromPlugin, policy_type


class MeshTLSPlugin(ToFromPlugin):
    resource_type = policy_type("MeshTLS", "meshtlses", MeshTLSSpec, "mtls")
    order = 300
    conf_model = Conf

    def edit_inbound(self, inbound: InboundListener, conf: Conf, resolved: Resolved) -> InboundListener:
        if inbound.tls is None or inbound.tls_mode is TlsMode.OFF:
            return inbound
        tls = inbound.tls
        if conf.tls_version is not None:
            low, high = conf.tls_version.min, conf.tls_version.max
            if low in RANK and high in RANK and RANK[low] > RANK[high]:  # type: ignore[index]
                high = low  # crossed by merged policies (one policy cannot): the newer minimum wins
            if low is not None:
                tls = evolve(tls, min_version=ENVOY_VERSION[low])
            if high is not None:
                tls = evolve(tls, max_version=ENVOY_VERSION[high])
        if conf.tls_ciphers is not None:
            tls = evolve(tls, ciphers=tuple(c.value for c in conf.tls_ciphers))
        mode = inbound.tls_mode
        if conf.mode is Mode.STRICT:
            mode = TlsMode.STRICT
        elif conf.mode is Mode.PERMISSIVE:
            mode = TlsMode.PERMISSIVE
        return evolve(inbound, tls=tls, tls_mode=mode)


PLUGIN = MeshTLSPlugin()
