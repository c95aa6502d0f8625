"""The ADS authenticator of zone ingresses and egresses (``isthmus.auth.zone_proxies``) against a real store:
a token of the proxy's type and name, for a registered proxy; every other node goes to the inner authenticator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from isthmus.auth.tokens import EGRESS_TYPE, INGRESS_TYPE, TokenService
from isthmus.auth.zone_proxies import ZoneProxyAuthenticator
from isthmus.egress.node import egress_node_id
from isthmus.ingress.node import ingress_node_id
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, ResourceStore
from isthmus.xds.server import StreamDenied

ZONE_INGRESS = {"networking": {"address": "127.0.0.1", "port": 10001}}
ZONE_EGRESS = {"networking": {"address": "127.0.0.1", "port": 10002}}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s = open_store(f"sqlite:{tmp_path / 'zp.db'}")
    await s.start()
    await s.write(
        [
            Op(OpKind.CREATE, "Mesh", "", "default"),
            Op(OpKind.CREATE, "ZoneIngress", "", "zi-1", ZONE_INGRESS),
            Op(OpKind.CREATE, "ZoneEgress", "", "ze-1", ZONE_EGRESS),
        ]
    )
    try:
        yield s
    finally:
        await s.close()


class Inner:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, node_id: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.seen.append(node_id)


def bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {token}")]


async def denied(
    auth: ZoneProxyAuthenticator, node: str, metadata: list[tuple[str, str | bytes]]
) -> StreamDenied:
    with pytest.raises(StreamDenied) as caught:
        await auth(node, metadata)
    return caught.value


async def test_zone_proxies_need_a_token_of_their_type_name_and_registration(store: ResourceStore) -> None:
    tokens = TokenService(store)
    inner = Inner()
    auth = ZoneProxyAuthenticator(inner, tokens, store)
    ingress = await tokens.issue_dataplane_token(mesh="default", name="zi-1", type=INGRESS_TYPE)
    egress = await tokens.issue_dataplane_token(mesh="default", name="ze-1", type=EGRESS_TYPE)
    sidecar = await tokens.issue_dataplane_token(mesh="default", name="zi-1")
    await auth(ingress_node_id("zi-1"), bearer(ingress))
    await auth(egress_node_id("ze-1"), bearer(egress))
    assert inner.seen == []  # zone proxies never reach the data planes' authenticator
    await auth("default.web-1", bearer(sidecar))
    assert inner.seen == ["default.web-1"]

    missing = await denied(auth, ingress_node_id("zi-1"), [])
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED
    wrong_type = await denied(auth, ingress_node_id("zi-1"), bearer(sidecar))
    assert wrong_type.code == grpc.StatusCode.PERMISSION_DENIED and "not 'ingress'" in wrong_type.message
    crossed = await denied(auth, egress_node_id("ze-1"), bearer(ingress))
    assert crossed.code == grpc.StatusCode.PERMISSION_DENIED and "not 'egress'" in crossed.message
    other = await tokens.issue_dataplane_token(mesh="default", name="zi-2", type=INGRESS_TYPE)
    wrong_name = await denied(auth, ingress_node_id("zi-1"), bearer(other))
    assert "the token is for 'zi-2'" in wrong_name.message
    unregistered = await denied(auth, ingress_node_id("zi-2"), bearer(other))
    assert "ZoneIngress 'zi-2' is not registered" in unregistered.message
    bad = await denied(auth, egress_node_id("ze-1"), bearer("not-a-token"))
    assert bad.code == grpc.StatusCode.UNAUTHENTICATED
