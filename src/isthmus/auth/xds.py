"""Authentication of ADS streams with data-plane tokens (``isthmus cp run --dp-auth token``).

A stream must carry ``authorization: Bearer <data-plane token>`` in its gRPC metadata. The token's mesh and
name (or, for a token without a name, the node id's name in the token's mesh) must be those of the node id of
the stream, and that Dataplane must be registered with tags the token allows. Otherwise the stream is refused
before anything is served: UNAUTHENTICATED without a valid token, PERMISSION_DENIED with a valid token that is
not this node's.

The Dataplane is looked up first in ``known`` (the control plane passes the generation loop's view of the stored
Dataplanes, :meth:`isthmus.cp.reconciler.Reconciler.dataplane_spec`: the records its configuration is generated
from, kept current by the store's change events), and in the store only when that view does not have it (a
Dataplane registered a moment ago, or a stream that arrives before the first generation): after a restart, a
thousand reconnecting streams then cost no store reads for their Dataplanes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from isthmus.auth.tokens import InvalidToken, TokenService, dataplane_tags
from isthmus.store.base import ResourceStore
from isthmus.xds.node import InvalidNodeId, loggable_node_id, parse_node_id
from isthmus.xds.server import StreamDenied


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization`` value: ``Bearer <token>`` (any case), or a bare token."""
    value = value.strip()
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() == "bearer":
        value = rest.strip()
    elif sep:
        return None
    return value or None


def metadata_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return bearer_token(text)
    return None


def name_in_mesh(node_id: str, mesh: str) -> str | None:
    """The Dataplane name that ``node_id`` stands for in ``mesh``, or None if it is not a node of ``mesh``."""
    try:
        node_mesh, name = parse_node_id(node_id)
    except InvalidNodeId:
        return None
    return name if node_mesh == mesh else None


class XdsAuthenticator:
    """The :class:`isthmus.xds.server.Authenticator` of a control plane with data-plane tokens."""

    def __init__(
        self,
        tokens: TokenService,
        store: ResourceStore,
        known: Callable[[str, str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.store = store
        self.known = known  # (mesh, name) -> the Dataplane's stored spec as the control plane last read it

    async def _dataplane_spec(self, mesh: str, name: str) -> Mapping[str, Any] | None:
        spec = self.known(mesh, name) if self.known is not None else None
        if spec is not None:
            return spec
        record = await self.store.get("Dataplane", mesh, name)
        return record.spec if record is not None else None

    async def __call__(self, node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        token = metadata_token(metadata)
        if token is None:
            raise StreamDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "a data-plane token is required: gRPC metadata 'authorization: Bearer <token>'",
            )
        try:
            identity = await self.tokens.verify_dataplane_token(token)
        except InvalidToken as exc:
            raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, f"invalid data-plane token: {exc}") from None
        if identity.type != "dataplane":
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {loggable_node_id(node_id)}: the token is for a proxy of type {identity.type!r}",
            )
        name = name_in_mesh(node_id, identity.mesh)
        if name is None:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node id {loggable_node_id(node_id)} is not a data plane of mesh {identity.mesh!r}, the token's mesh",
            )
        if identity.name and identity.name != name:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {loggable_node_id(node_id)}: the token is for the Dataplane {identity.name!r}, not {name!r}",
            )
        spec = await self._dataplane_spec(identity.mesh, name)
        if spec is None:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Dataplane {name!r} of mesh {identity.mesh!r} is not registered",
            )
        refusal = identity.refusal(identity.mesh, name, dataplane_tags(spec))
        if refusal is not None:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED, f"node {loggable_node_id(node_id)}: {refusal}"
            )
