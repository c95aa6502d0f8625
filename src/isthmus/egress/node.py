"""The xDS node id of a zone egress: ``:zoneegress:<name>`` (the ``:`` prefix is never a mesh name), and the
identity it presents to a mesh's sidecars (Kuma's: ``kuma.io/service: zone-egress``)."""

from __future__ import annotations

PREFIX = ":zoneegress:"
PROXY_TYPE = "egress"  # the data-plane token Type claim and the agent's --proxy-type
EGRESS_SERVICE = "zone-egress"  # the egress's certificate in each mesh: spiffe://<mesh>/zone-egress


def egress_node_id(name: str) -> str:
    return PREFIX + name


def egress_name(node_id: str) -> str | None:
    """The ZoneEgress name of a node id, None when it is not an egress's."""
    if node_id.startswith(PREFIX) and len(node_id) > len(PREFIX):
        return node_id[len(PREFIX) :]
    return None


def egress_spiffe_id(mesh: str) -> str:
    return f"spiffe://{mesh}/{EGRESS_SERVICE}"
