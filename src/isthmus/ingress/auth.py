"""ADS authentication of zone ingresses: a data-plane token of type ``ingress`` (``isthmus generate
dataplane-token --proxy-type ingress --name NAME``) whose name is the ingress's (or empty), for a ZoneIngress
that is registered. Every other node goes to the data planes' authenticator."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from isthmus.auth.tokens import INGRESS_TYPE, InvalidToken, TokenService
from isthmus.auth.xds import XdsAuthenticator, metadata_token
from isthmus.ingress.node import ingress_name
from isthmus.store.base import ResourceStore
from isthmus.xds.server import StreamDenied


class IngressAwareAuthenticator:
    def __init__(self, inner: XdsAuthenticator, tokens: TokenService, store: ResourceStore) -> None:
        self.inner = inner
        self.tokens = tokens
        self.store = store

    async def __call__(self, node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        name = ingress_name(node_id)
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
        if identity.type != INGRESS_TYPE:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"zone ingress {name!r}: the token is for a proxy of type {identity.type!r}, not 'ingress'",
            )
        if identity.name and identity.name != name:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"zone ingress {name!r}: the token is for {identity.name!r}",
            )
        if await self.store.get("ZoneIngress", "", name) is None:
            raise StreamDenied(grpc.StatusCode.PERMISSION_DENIED, f"ZoneIngress {name!r} is not registered")
