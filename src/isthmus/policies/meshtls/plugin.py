"""MeshTLS: per inbound, the TLS versions and ciphers peers must use, and Strict or Permissive mTLS.

Only meaningful with mesh mTLS on: an inbound without TLS (mTLS off) is left alone.
"""

from __future__ import annotations

from isthmus.ir.evolve import evolve
from isthmus.ir.model import InboundListener, TlsMode
from isthmus.policies.engine import Resolved
from isthmus.policies.meshtls.api import ENVOY_VERSION, Conf, MeshTLSSpec, Mode
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
            if conf.tls_version.min is not None:
                tls = evolve(tls, min_version=ENVOY_VERSION[conf.tls_version.min])
            if conf.tls_version.max is not None:
                tls = evolve(tls, max_version=ENVOY_VERSION[conf.tls_version.max])
        if conf.tls_ciphers is not None:
            tls = evolve(tls, ciphers=tuple(c.value for c in conf.tls_ciphers))
        mode = inbound.tls_mode
        if conf.mode is Mode.STRICT:
            mode = TlsMode.STRICT
        elif conf.mode is Mode.PERMISSIVE:
            mode = TlsMode.PERMISSIVE
        return evolve(inbound, tls=tls, tls_mode=mode)


PLUGIN = MeshTLSPlugin()
