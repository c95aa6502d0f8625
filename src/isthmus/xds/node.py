"""xDS node ids: ``<mesh>.<name>``, as Kuma's.

Mesh names cannot contain ``.`` (the resource validation refuses them), Dataplane names can; so a node id is
split at its first dot and two different ``(mesh, name)`` pairs can never share a node id. The reconciler does
not serve a stored mesh whose name has a dot (one written before that rule existed).
"""

from __future__ import annotations

__all__ = [
    "MAX_NODE_ID_LENGTH",
    "InvalidNodeId",
    "loggable_node_id",
    "mesh_name_usable",
    "node_id",
    "node_id_or_none",
    "parse_node_id",
]

# A mesh name and a Dataplane name (at most 253 characters each) and the dot, rounded up: the ADS server refuses
# longer node ids before authenticating them.
MAX_NODE_ID_LENGTH = 512
_LOGGED_CHARS = 128


def loggable_node_id(nid: str) -> str:
    """``nid`` quoted for a log or error message, cut to its first 128 characters: a node id comes from the
    client before it is authenticated, and must not let a stranger write megabytes to the log."""
    if len(nid) <= _LOGGED_CHARS:
        return repr(nid)
    return f"{nid[:_LOGGED_CHARS]!r}... ({len(nid)} characters)"


class InvalidNodeId(ValueError):
    """A node id that is not ``<mesh>.<name>`` with a mesh name free of dots and a non-empty name."""


def mesh_name_usable(mesh: str) -> bool:
    """Whether a mesh of this name can have node ids (non-empty, no dot)."""
    return bool(mesh) and "." not in mesh


def node_id(mesh: str, name: str) -> str:
    """The node id of Dataplane ``name`` in ``mesh``; InvalidNodeId if it could be mistaken for another's."""
    if not mesh_name_usable(mesh):
        raise InvalidNodeId(f"mesh name {mesh!r} cannot form a node id: it must be non-empty and have no '.'")
    if not name:
        raise InvalidNodeId("a Dataplane name must not be empty")
    return f"{mesh}.{name}"


def node_id_or_none(mesh: str, name: str) -> str | None:
    """:func:`node_id`, or None for a (stored) mesh whose name cannot form one: its proxies are not served, and
    what is looked up by node id for them must not find another proxy's state."""
    try:
        return node_id(mesh, name)
    except InvalidNodeId:
        return None


def parse_node_id(nid: str) -> tuple[str, str]:
    """``(mesh, name)`` of a node id (split at the first dot); InvalidNodeId when it has no such form."""
    mesh, sep, name = nid.partition(".")
    if not sep or not mesh or not name:
        raise InvalidNodeId(f"node id {loggable_node_id(nid)} is not '<mesh>.<name>'")
    return mesh, name
