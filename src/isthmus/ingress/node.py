"""The xDS node id of a zone ingress: ``:zoneingress:<name>``. A ZoneIngress has no mesh; the ``:`` prefix can
never be a mesh name, so it cannot be taken for a Dataplane's ``<mesh>.<name>``."""

from __future__ import annotations

PREFIX = ":zoneingress:"
PROXY_TYPE = "ingress"  # the data-plane token Type claim and the agent's --proxy-type


def ingress_node_id(name: str) -> str:
    return PREFIX + name


def ingress_name(node_id: str) -> str | None:
    """The ZoneIngress name of a node id, None when it is not an ingress's."""
    if node_id.startswith(PREFIX) and len(node_id) > len(PREFIX):
        return node_id[len(PREFIX) :]
    return None
