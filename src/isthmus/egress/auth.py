"""ADS authentication of zone egresses: a data-plane token of type ``egress`` (``isthmus generate dataplane-token
--proxy-type egress --name NAME``) whose name is the egress's (or empty), for a ZoneEgress that is registered.
Every other node goes to the inner authenticator (zone ingresses, then data planes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

from isthmus.auth.tokens import EGRESS_TYPE, InvalidToken, TokenService
from isthmus.auth.xds import metadata_token
from isthmus.egress.node import egress_name
from isthmus.store.base import ResourceStore
from isthmus.xds.server import StreamDenied

Inner = Callable[[str, Sequence[tuple[str, str | bytes]]], Awaitable[None]]


class EgressAwareAuthenticator:
    def __init__(self, inner: Inner, tokens: TokenService, store: ResourceStore) -> None:
        self.inner = inner
        self.tokens = tokens
        self.store = store

    async def __call__(self, node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        name = egress_name(node_id)
        if name is None:
            await self.inner(node_id, metadata)
            return
        token = metadata_token(metadata)
        if token is None:
            raise StreamDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "a token is required: gRPC metadata 'authorization: Bearer <token>'",
            )
        try:
            identity = await self.tokens.verify_dataplane_token(token)
        except InvalidToken as exc:
            raise StreamDenied(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
        if identity.type != EGRESS_TYPE:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"zone egress {name!r}: the token is for a proxy of type {identity.type!r}, not 'egress'",
            )
        if identity.name and identity.name != name:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED, f"zone egress {name!r}: the token is for {identity.name!r}"
            )
        if await self.store.get("ZoneEgress", "", name) is None:
            raise StreamDenied(grpc.StatusCode.PERMISSION_DENIED, f"ZoneEgress {name!r} is not registered")
