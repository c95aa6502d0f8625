"""Data-plane and user tokens against a real store: signing, verification, expiry, revocation, key rotation,
the tag rule, and the ADS authenticator's decisions."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from isthmus.auth.keys import USER_KEYS, KeySet, SigningKeyError, dataplane_keys
from isthmus.auth.tokens import (
    DataplaneIdentity,
    InvalidToken,
    TokenService,
    UserIdentity,
    dataplane_revocations_name,
    dataplane_tags,
)
from isthmus.auth.xds import XdsAuthenticator, bearer_token, name_in_mesh
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, ResourceStore
from isthmus.xds.server import StreamDenied

DAY = timedelta(days=1)


def dataplane_spec(service: str = "web", **extra_tags: str) -> dict[str, Any]:
    return {
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": service, **extra_tags}}],
        }
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s = open_store(f"sqlite:{tmp_path / 'tokens.db'}")
    await s.start()
    await s.write([Op(OpKind.CREATE, "Mesh", "", "default"), Op(OpKind.CREATE, "Mesh", "", "other")])
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def tokens(store: ResourceStore) -> TokenService:
    return TokenService(store)


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


async def test_dataplane_token_carries_kuma_claims_and_verifies(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token(
        mesh="default", name="web-1", tags={"kuma.io/service": ["web"]}, valid_for=DAY
    )
    claims = payload(token)
    assert claims["Name"] == "web-1" and claims["Mesh"] == "default" and claims["Type"] == "dataplane"
    assert claims["Tags"] == {"kuma.io/service": ["web"]}
    assert claims["exp"] - claims["iat"] == DAY.total_seconds() and claims["jti"]
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "1", "typ": "JWT"}
    identity = await tokens.verify(token)
    assert isinstance(identity, DataplaneIdentity)
    assert (identity.mesh, identity.name, dict(identity.tags)) == (
        "default",
        "web-1",
        {"kuma.io/service": frozenset({"web"})},
    )


async def test_user_token_verifies_and_knows_its_groups(tokens: TokenService) -> None:
    admin = await tokens.verify(
        await tokens.issue_user_token(name="alice", groups=["mesh-system:admin"], valid_for=DAY)
    )
    reader = await tokens.verify(
        await tokens.issue_user_token(name="bob", groups=["mesh-system:readonly"], valid_for=DAY)
    )
    assert isinstance(admin, UserIdentity) and admin.is_admin and admin.name == "alice"
    assert isinstance(reader, UserIdentity) and not reader.is_admin
    assert set(payload(await tokens.issue_user_token(name="c", groups=[], valid_for=DAY))) >= {
        "Name",
        "Groups",
        "exp",
        "jti",
    }


async def test_expired_token_is_refused(tokens: TokenService) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    token = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY, now=old)
    with pytest.raises(InvalidToken, match="expired"):
        await tokens.verify(token)
    user = await tokens.issue_user_token(name="alice", groups=[], valid_for=DAY, now=old)
    with pytest.raises(InvalidToken, match="expired"):
        await tokens.verify(user)


async def test_a_signed_token_with_an_unusable_exp_is_refused(tokens: TokenService) -> None:
    """A token signed with the right key by another tool may carry any ``exp``: one past datetime's range (year
    33658) or not a whole number is an invalid token (401), not a crash (500)."""
    for keyset, claims in (
        (
            dataplane_keys("default"),
            payload(await tokens.issue_dataplane_token(mesh="default", name="web-1")),
        ),
        (USER_KEYS, payload(await tokens.issue_user_token(name="alice", groups=[], valid_for=DAY))),
    ):
        serial, key = await tokens.keys.latest(keyset)
        for exp, reason in ((10**12, "out of range"), (4_000_000_000.5, "whole number")):
            forged = jwt.encode({**claims, "exp": exp}, key, algorithm="RS256", headers={"kid": str(serial)})
            with pytest.raises(InvalidToken, match=reason):
                await tokens.verify(forged)


async def test_tampered_forged_and_cross_kind_tokens_are_refused(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    header, body, signature = token.split(".")
    claims = payload(token)
    claims["Name"] = "db-1"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="signature"):
        await tokens.verify(f"{header}.{forged_body}.{signature}")
    # signed by another mesh's key, claiming this mesh
    other = await tokens.issue_dataplane_token(mesh="other", name="web-1", valid_for=DAY)
    oh, _, osig = other.split(".")
    with pytest.raises(InvalidToken):
        await tokens.verify(f"{oh}.{body}.{osig}")
    # an unsigned token
    unsigned = jwt.encode(claims, key="", algorithm="none", headers={"kid": "1"})
    with pytest.raises(InvalidToken, match="RS256"):
        await tokens.verify(unsigned)
    # a shared-secret algorithm (HS256) is refused whatever the secret
    with pytest.raises(InvalidToken, match="RS256"):
        await tokens.verify(jwt.encode(claims, "s" * 64, algorithm="HS256", headers={"kid": "1"}))
    for garbage in ("", "abc", "a.b.c", "x" * 20_000):
        with pytest.raises(InvalidToken):
            await tokens.verify(garbage)
    # a user token is not a data-plane token and the other way round
    user = await tokens.issue_user_token(name="alice", groups=["mesh-system:admin"], valid_for=DAY)
    with pytest.raises(InvalidToken):
        await tokens.verify_dataplane_token(user)
    with pytest.raises(InvalidToken):
        await tokens.verify_user_token(token)


async def test_revocation_lists_ids_in_kumas_secret(tokens: TokenService, store: ResourceStore) -> None:
    first = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    second = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    await tokens.revoke(payload(first)["jti"], "default")
    await tokens.revoke(payload(first)["jti"], "default")  # idempotent
    with pytest.raises(InvalidToken, match="revoked"):
        await tokens.verify(first)
    assert isinstance(await tokens.verify(second), DataplaneIdentity)
    record = await store.get("Secret", "default", dataplane_revocations_name("default"))
    assert record is not None and record.spec["data"]["value"] == payload(first)["jti"]
    # concurrent revocations all land
    ids = [f"id-{i}" for i in range(8)]
    await asyncio.gather(*(tokens.revoke(i, "default") for i in ids))
    assert await tokens.revoked_ids("default") == {payload(first)["jti"], *ids}
    # user tokens: the GlobalSecret user-token-revocations
    user = await tokens.issue_user_token(name="alice", groups=["mesh-system:admin"], valid_for=DAY)
    await tokens.revoke(payload(user)["jti"], None)
    with pytest.raises(InvalidToken, match="revoked"):
        await tokens.verify(user)
    assert await store.get("GlobalSecret", "", "user-token-revocations") is not None


async def test_rotation_keeps_old_tokens_until_their_key_is_deleted(
    tokens: TokenService, store: ResourceStore
) -> None:
    old = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    assert await tokens.rotate_signing_key("default") == 2
    new = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    assert jwt.get_unverified_header(new)["kid"] == "2"
    assert isinstance(await tokens.verify(old), DataplaneIdentity)
    assert isinstance(await tokens.verify(new), DataplaneIdentity)
    with pytest.raises(SigningKeyError, match="latest"):
        await tokens.delete_signing_key("default", 2)
    await tokens.delete_signing_key("default", 1)
    with pytest.raises(InvalidToken, match="serial 1"):
        await tokens.verify(old)
    assert isinstance(await tokens.verify(new), DataplaneIdentity)
    assert await tokens.signing_key_serials("default") == [2]
    names = {r.name for r in (await store.list("Secret", "default")).items}
    assert "dataplane-token-signing-key-default-2" in names
    # the user keys are separate and rotate alike
    user = await tokens.issue_user_token(name="alice", groups=[], valid_for=DAY)
    assert await tokens.rotate_signing_key(None) == 2
    assert isinstance(await tokens.verify(user), UserIdentity)
    assert await store.get("GlobalSecret", "", "user-token-signing-key-2") is not None


async def test_first_key_is_created_once_under_concurrency(
    tokens: TokenService, store: ResourceStore
) -> None:
    issued = await asyncio.gather(
        *(tokens.issue_dataplane_token(mesh="default", name=f"dp-{i}", valid_for=DAY) for i in range(6))
    )
    assert await tokens.signing_key_serials("default") == [1]
    for token in issued:
        assert isinstance(await tokens.verify(token), DataplaneIdentity)


async def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    path = f"sqlite:{tmp_path / 'restart.db'}"
    first = open_store(path)
    await first.start()
    await first.write([Op(OpKind.CREATE, "Mesh", "", "default")])
    token = await TokenService(first).issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    user = await TokenService(first).issue_user_token(name="alice", groups=[], valid_for=DAY)
    await first.close()
    second = open_store(path)
    await second.start()
    try:
        again = TokenService(second)
        assert isinstance(await again.verify(token), DataplaneIdentity)
        assert isinstance(await again.verify(user), UserIdentity)
    finally:
        await second.close()


def test_keyset_names_and_serials() -> None:
    keys = dataplane_keys("default")
    assert keys.name(3) == "dataplane-token-signing-key-default-3"
    assert keys.serial_of("dataplane-token-signing-key-default-3") == 3
    for other in ("dataplane-token-signing-key-default", "dataplane-token-signing-key-default-x", "ca-1"):
        assert keys.serial_of(other) is None
    assert dataplane_keys("a").serial_of("dataplane-token-signing-key-a-b-1") is None
    assert USER_KEYS.name(1) == "user-token-signing-key-1"
    assert isinstance(USER_KEYS, KeySet)


def test_tag_rule() -> None:
    identity = DataplaneIdentity(
        mesh="default",
        name="",
        tags={"kuma.io/service": frozenset({"web", "web-api"})},
        type="dataplane",
        token_id="x",
        expires_at=datetime.now(UTC),
    )
    ok = dataplane_tags(dataplane_spec("web", version="v1"))
    assert identity.refusal("default", "any-name", ok) is None
    assert "mesh" in (identity.refusal("other", "web-1", ok) or "")
    assert "'db'" in (identity.refusal("default", "x", dataplane_tags(dataplane_spec("db"))) or "")
    two = {
        "networking": {"inbound": [{"tags": {"kuma.io/service": "web"}}, {"tags": {"kuma.io/service": "db"}}]}
    }
    assert identity.refusal("default", "x", dataplane_tags(two)) is not None  # every value must be allowed
    assert "no tag" in (identity.refusal("default", "x", {}) or "")
    named = DataplaneIdentity("default", "web-1", {}, "dataplane", "x", datetime.now(UTC))
    assert named.refusal("default", "web-1", {}) is None
    assert named.refusal("default", "web-2", {}) is not None


def test_bearer_and_node_id_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("") is None
    assert name_in_mesh("default.web-1", "default") == "web-1"
    assert name_in_mesh("default.web-1", "other") is None


async def test_ads_authenticator(tokens: TokenService, store: ResourceStore) -> None:
    await store.write(
        [
            Op(OpKind.CREATE, "Dataplane", "default", "web-1", spec=dataplane_spec("web")),
            Op(OpKind.CREATE, "Dataplane", "default", "db-1", spec=dataplane_spec("db")),
        ]
    )
    auth = XdsAuthenticator(tokens, store)
    web = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=DAY)
    by_tag = await tokens.issue_dataplane_token(
        mesh="default", tags={"kuma.io/service": ["web"]}, valid_for=DAY
    )
    other_mesh = await tokens.issue_dataplane_token(mesh="other", name="web-1", valid_for=DAY)
    user = await tokens.issue_user_token(name="alice", groups=["mesh-system:admin"], valid_for=DAY)

    async def code(node: str, token: str | None) -> grpc.StatusCode | None:
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        try:
            await auth(node, metadata)
        except StreamDenied as exc:
            return exc.code
        return None

    assert await code("default.web-1", web) is None
    assert await code("default.web-1", by_tag) is None
    assert await code("default.web-1", None) == grpc.StatusCode.UNAUTHENTICATED
    assert await code("default.web-1", "garbage") == grpc.StatusCode.UNAUTHENTICATED
    assert await code("default.web-1", user) == grpc.StatusCode.UNAUTHENTICATED
    assert await code("default.db-1", web) == grpc.StatusCode.PERMISSION_DENIED
    assert await code("default.db-1", by_tag) == grpc.StatusCode.PERMISSION_DENIED
    assert await code("default.web-1", other_mesh) == grpc.StatusCode.PERMISSION_DENIED
    assert await code("default.web-2", by_tag) == grpc.StatusCode.PERMISSION_DENIED  # not registered
    await tokens.revoke(payload(web)["jti"], "default")
    assert await code("default.web-1", web) == grpc.StatusCode.UNAUTHENTICATED


def test_cp_run_auth_options_are_checked() -> None:
    from typer.testing import CliRunner

    from isthmus.cli.cp import parse_bool
    from isthmus.cli.main import app

    assert [parse_bool(v) for v in ("true", "FALSE", "1", "no", "maybe")] == [True, False, True, False, None]
    runner = CliRunner()
    for args, flag in (
        (["--dp-auth", "bogus"], "--dp-auth"),
        (["--api-localhost-is-admin=maybe"], "--api-localhost-is-admin"),
        (["--max-xds-streams", "0"], "--max-xds-streams"),
    ):
        result = runner.invoke(app, ["cp", "run", *args])
        assert result.exit_code == 1, result.output
        assert flag in result.output and len(result.output.strip().splitlines()) == 1


async def test_a_token_verified_before_is_checked_again_for_expiry_key_and_revocation(
    store: ResourceStore,
) -> None:
    """Verified claims are remembered per token, but every use checks the expiry, that the same stored key
    still verifies it, and the revocation list."""
    now = [datetime.now(UTC).timestamp()]
    tokens = TokenService(store, clock=lambda: now[0])
    token = await tokens.issue_dataplane_token(mesh="default", name="web-1", valid_for=timedelta(hours=1))
    other = await tokens.issue_dataplane_token(mesh="default", name="web-2", valid_for=DAY)
    first = await tokens.verify_dataplane_token(token)
    assert await tokens.verify_dataplane_token(token) == first
    assert (await tokens.verify_dataplane_token(other)).name == "web-2"  # another token, its own claims
    now[0] += 2 * 3600
    with pytest.raises(InvalidToken, match="expired"):
        await tokens.verify_dataplane_token(token)
    now[0] -= 2 * 3600
    await tokens.revoke(payload(token)["jti"], "default")
    with pytest.raises(InvalidToken, match="revoked"):
        await tokens.verify_dataplane_token(token)
    # the key of serial 1 replaced in the store by another key: the remembered verification does not count
    assert (await tokens.verify_dataplane_token(other)).name == "web-2"
    replacement = TokenService(open_store("memory"))
    await replacement.issue_dataplane_token(mesh="default", name="x")
    key_name = dataplane_keys("default").name(1)
    new_key = await replacement.store.get("Secret", "default", key_name)
    assert new_key is not None
    await store.write([Op(OpKind.UPSERT, "Secret", "default", key_name, spec=new_key.spec)])
    with pytest.raises(InvalidToken, match="signature"):
        await tokens.verify_dataplane_token(other)


async def test_ads_authenticator_checks_the_dataplane_the_control_plane_knows(
    tokens: TokenService, store: ResourceStore
) -> None:
    """With ``known`` (the generation loop's view of the Dataplanes), a stream's token is checked against that
    view, and against the store only for a Dataplane the view does not have."""
    await store.write([Op(OpKind.CREATE, "Dataplane", "default", "web-1", spec=dataplane_spec("web"))])
    known = {("default", "web-2"): dataplane_spec("web"), ("default", "db-1"): dataplane_spec("db")}
    auth = XdsAuthenticator(tokens, store, lambda mesh, name: known.get((mesh, name)))
    by_tag = await tokens.issue_dataplane_token(
        mesh="default", tags={"kuma.io/service": ["web"]}, valid_for=DAY
    )

    async def code(node: str) -> grpc.StatusCode | None:
        try:
            await auth(node, [("authorization", f"Bearer {by_tag}")])
        except StreamDenied as exc:
            return exc.code
        return None

    assert await code("default.web-1") is None  # not in the view: read from the store
    assert await code("default.web-2") is None  # in the view only
    assert await code("default.db-1") == grpc.StatusCode.PERMISSION_DENIED  # its tags are not the token's
    assert await code("default.web-3") == grpc.StatusCode.PERMISSION_DENIED  # nowhere
