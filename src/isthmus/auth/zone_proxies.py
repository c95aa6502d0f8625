"""ADS authentication of zone proxies: a zone ingress or egress (node id ``:zoneingress:<name>`` /
``:zoneegress:<name>``) needs a data-plane token of its type (``isthmus generate dataplane-token --proxy-type
ingress|egress --name NAME``) whose name is the proxy's (or empty), and its resource must be registered. Every other
node goes to the inner authenticator (the data planes')."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from isthmus.auth.tokens import EGRESS_TYPE, INGRESS_TYPE, InvalidToken, TokenService
from isthmus.auth.xds import metadata_token
from isthmus.store.base import ResourceStore
from isthmus.xds.server import StreamDenied

Authenticator = Callable[[str, Sequence[tuple[str, str | bytes]]], Awaitable[None]]


@dataclass(frozen=True)
class ZoneProxyKind:
    kind: str  # the resource type: ZoneIngress, ZoneEgress
    token_type: str  # the data-plane token's type claim
    label: str  # how messages name it
    name_of: Callable[[str], str | None]  # node id -> the proxy's name, None for other nodes


def zone_proxy_kinds() -> tuple[ZoneProxyKind, ...]:
    from isthmus.egress.node import egress_name
    from isthmus.ingress.node import ingress_name

    return (
        ZoneProxyKind("ZoneIngress", INGRESS_TYPE, "zone ingress", ingress_name),
        ZoneProxyKind("ZoneEgress", EGRESS_TYPE, "zone egress", egress_name),
    )


class ZoneProxyAuthenticator:
    def __init__(
        self,
        inner: Authenticator,
        tokens: TokenService,
        store: ResourceStore,
        kinds: Sequence[ZoneProxyKind] | None = None,
    ) -> None:
        self.inner = inner
        self.tokens = tokens
        self.store = store
        self.kinds = tuple(kinds) if kinds is not None else zone_proxy_kinds()

    async def __call__(self, node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        for kind in self.kinds:
            name = kind.name_of(node_id)
            if name is not None:
                await self._check(kind, name, metadata)
                return
        await self.inner(node_id, metadata)

    async def _check(
        self, kind: ZoneProxyKind, name: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> None:
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
        if identity.type != kind.token_type:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{kind.label} {name!r}: the token is for a proxy of type {identity.type!r}, not {kind.token_type!r}",
            )
        if identity.name and identity.name != name:
            raise StreamDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{kind.label} {name!r}: the token is for {identity.name!r}",
            )
        if await self.store.get(kind.kind, "", name) is None:
            raise StreamDenied(grpc.StatusCode.PERMISSION_DENIED, f"{kind.kind} {name!r} is not registered")
