"""Multi-zone sync logic: what travels which way, names and labels, diffs, the write guard's refusals and zone
tokens, against real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from isthmus.auth.tokens import InvalidToken, TokenService
from isthmus.auth.zone_tokens import issue_zone_token, revoke_zone_token, verify_zone_token
from isthmus.catalog import default_registry
from isthmus.cp.api.errors import ApiError
from isthmus.kds.ownership import WriteGuard
from isthmus.kds.sync import (
    Changes,
    apply_to,
    diff,
    digest,
    downstream_types,
    downstream_wire,
    global_name,
    is_copy_in_zone,
    key_of,
    upstream_on_global,
    upstream_types,
    upstream_wire,
    wire_of,
    zone_key_on_global,
)
from isthmus.kds.zone_client import parse_global_address
from isthmus.resources.registry import KdsScope, ResourceType
from isthmus.store import open_store
from isthmus.store.base import Op, OpKind, Record, ResourceStore

REGISTRY = default_registry()
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def rtype(kind: str) -> ResourceType:
    found = REGISTRY.kind(kind)
    assert found is not None
    return found


def record(kind: str, name: str, mesh: str = "default", labels: dict[str, str] | None = None) -> Record:
    return Record(kind, mesh, name, {"x": name}, labels or {}, 1, NOW, NOW)


@pytest.fixture
async def store() -> AsyncIterator[ResourceStore]:
    s = open_store("memory")
    await s.start()
    yield s
    await s.close()


# -- what syncs which way ----------------------------------------------------------------------------------------
def test_kinds_follow_the_registry() -> None:
    down = {t.kind for t in downstream_types(REGISTRY)}
    up = {t.kind for t in upstream_types(REGISTRY)}
    assert {"Mesh", "MeshTrafficPermission", "MeshTimeout", "Secret", "ZoneIngress"} <= down
    assert up == {t.kind for t in REGISTRY.all() if t.sync in (KdsScope.FROM_ZONE, KdsScope.FROM_ZONE_TO_ALL)}
    assert {"Dataplane", "ZoneIngress"} <= up
    assert "Dataplane" not in down and "Zone" not in down and "ZoneInsight" not in up
    assert all(t.sync is KdsScope.FROM_GLOBAL_OR_ZONE for t in REGISTRY.policies())


def test_global_sends_its_own_resources_labelled_global() -> None:
    wire = downstream_wire(rtype("MeshTimeout"), record("MeshTimeout", "t1"), "east")
    assert wire is not None
    assert wire["name"] == "t1"
    assert wire["labels"] == {"kuma.io/origin": "global", "kuma.io/display-name": "t1"}


def test_only_mesh_cas_among_secrets() -> None:
    secret = rtype("Secret")
    assert downstream_wire(secret, record("Secret", "default.ca-builtin-cert-ca-1"), "east") is not None
    assert downstream_wire(secret, record("Secret", "dataplane-token-signing-key-default-1"), "east") is None
    assert downstream_wire(secret, record("Secret", "default.ca-trust"), "east") is None


def test_zone_resources_go_to_other_zones_only() -> None:
    zi = rtype("ZoneIngress")
    copy = record("ZoneIngress", "zi-abc", "", {"kuma.io/origin": "zone", "kuma.io/zone": "east"})
    assert downstream_wire(zi, copy, "east") is None
    sent = downstream_wire(zi, copy, "west")
    assert sent is not None and sent["labels"]["kuma.io/zone"] == "east"
    # a zone's policy copied to the global (not a thing today) never goes back down
    policy = record("MeshTimeout", "p", labels={"kuma.io/origin": "zone", "kuma.io/zone": "east"})
    assert downstream_wire(rtype("MeshTimeout"), policy, "west") is None


def test_zone_sends_its_own_and_never_copies() -> None:
    dp = rtype("Dataplane")
    own = upstream_wire(dp, record("Dataplane", "web-1"), "east")
    assert own is not None and own["labels"] == {"kuma.io/origin": "zone", "kuma.io/zone": "east"}
    assert upstream_wire(dp, record("Dataplane", "x", labels={"kuma.io/origin": "global"}), "east") is None
    other = record("ZoneIngress", "zi", "", {"kuma.io/origin": "zone", "kuma.io/zone": "west"})
    assert upstream_wire(rtype("ZoneIngress"), other, "east") is None
    assert is_copy_in_zone(other, "east") and not is_copy_in_zone(other, "west")
    assert upstream_wire(rtype("MeshTimeout"), record("MeshTimeout", "local"), "east") is None
    ingress = Record("ZoneIngress", "", "zi", {"networking": {}}, {}, 1, NOW, NOW)
    sent = upstream_wire(rtype("ZoneIngress"), ingress, "east")
    assert sent is not None and sent["spec"]["zone"] == "east"


def test_names_on_the_global_are_unique_per_zone_and_stable() -> None:
    east = global_name("web-1", "default", "east")
    assert east == global_name("web-1", "default", "east")
    assert east != global_name("web-1", "default", "west") != global_name("web-1", "other", "east")
    assert east.startswith("web-1-") and len(east) == len("web-1-") + 16
    long = global_name("a" * 253, "default", "east")
    assert len(long) <= 253
    stored = upstream_on_global({"type": "Dataplane", "mesh": "default", "name": "web-1", "spec": {}}, "east")
    assert stored["name"] == east
    assert stored["labels"] == {
        "kuma.io/display-name": "web-1",
        "kuma.io/origin": "zone",
        "kuma.io/zone": "east",
    }
    on_global = Record("Dataplane", "default", east, {}, stored["labels"], 1, NOW, NOW)
    assert zone_key_on_global(on_global, "east") == ("Dataplane", "default", "web-1")
    assert zone_key_on_global(on_global, "west") is None


# -- diffs -----------------------------------------------------------------------------------------------------
def test_diff_sends_only_what_changed_and_removes_what_is_gone() -> None:
    a, b, c = (wire_of(record("MeshTimeout", n)) for n in ("a", "b", "c"))
    have = {key_of(a): digest(a), key_of(b): "stale", ("MeshTimeout", "default", "gone"): "x"}
    want = {key_of(w): w for w in (a, b, c)}
    changes = diff(have, want)
    assert [w["name"] for w in changes.upsert] == ["b", "c"]
    assert changes.remove == [("MeshTimeout", "default", "gone")]
    apply_to(have, changes)
    assert not diff(have, want)
    # a diff limited to some kinds leaves the others alone
    have[("Mesh", "", "m")] = "x"
    assert not diff(have, want, {"MeshTimeout"})
    assert diff(have, want, {"Mesh"}).remove == [("Mesh", "", "m")]


def test_changes_messages_round_trip_and_reject_garbage() -> None:
    changes = Changes([wire_of(record("Mesh", "m", ""))], [("MeshTimeout", "default", "t")])
    back = Changes.from_message(changes.to_message())
    assert back.upsert == changes.upsert and back.remove == changes.remove
    for bad in ({"upsert": "x"}, {"remove": [["a", "b"]]}, {"upsert": [{"name": "x"}]}):
        with pytest.raises((ValueError, KeyError)):
            Changes.from_message(bad)


def test_global_address_forms() -> None:
    assert parse_global_address("grpcs://global.example:5685") == "global.example:5685"
    assert parse_global_address("127.0.0.1:5685") == "127.0.0.1:5685"
    for bad in ("http://x:1", "grpcs://x", "x"):
        with pytest.raises(ValueError):
            parse_global_address(bad)


# -- ownership -------------------------------------------------------------------------------------------------
async def test_zone_refuses_global_kinds_and_copies(store: ResourceStore) -> None:
    guard = WriteGuard(store, "zone", zone="east", global_address="grpcs://g:5685")
    with pytest.raises(ApiError) as refused:
        await guard.check_put(rtype("Mesh"), "", "default", {})
    assert refused.value.status == 400 and "global control plane (grpcs://g:5685)" in refused.value.detail
    await store.write(
        [Op(OpKind.CREATE, "MeshTimeout", "default", "t", spec={}, labels={"kuma.io/origin": "global"})]
    )
    for check in (
        guard.check_put(rtype("MeshTimeout"), "default", "t", {}),
        guard.check_delete(rtype("MeshTimeout"), "default", "t"),
        guard.check_delete(rtype("Mesh"), "", "default"),
        guard.check_put(rtype("Zone"), "", "east", {}),
    ):
        with pytest.raises(ApiError):
            await check
    labels = await guard.check_put(rtype("MeshTimeout"), "default", "mine", {"team": "a"})
    assert labels == {"team": "a", "kuma.io/origin": "zone", "kuma.io/zone": "east"}
    with pytest.raises(ApiError, match="comes from elsewhere"):
        await guard.check_put(rtype("MeshTimeout"), "default", "x", {"kuma.io/zone": "west"})


async def test_global_refuses_zone_kinds_and_zone_copies(store: ResourceStore) -> None:
    guard = WriteGuard(store, "global")
    with pytest.raises(ApiError, match="made in zones"):
        await guard.check_put(rtype("Dataplane"), "default", "web", {})
    labels = {"kuma.io/origin": "zone", "kuma.io/zone": "east"}
    await store.write([Op(OpKind.CREATE, "MeshTimeout", "default", "z", spec={}, labels=labels)])
    with pytest.raises(ApiError, match="synced from zone 'east'"):
        await guard.check_delete(rtype("MeshTimeout"), "default", "z")
    assert await guard.check_put(rtype("MeshTimeout"), "default", "g", {}) == {}
    with pytest.raises(ApiError, match="written by the control plane"):
        await guard.check_put(rtype("ZoneInsight"), "", "east", {})


# -- zone tokens -------------------------------------------------------------------------------------------------
async def test_zone_tokens(store: ResourceStore) -> None:
    tokens = TokenService(store)
    token = await issue_zone_token(tokens, zone="east", scopes=["cp"], valid_for=timedelta(hours=1))
    identity = await verify_zone_token(tokens, token)
    assert identity.zone == "east" and identity.allows("cp") and not identity.allows("ingress")
    # not a user token, and a user token is not a zone token
    with pytest.raises(InvalidToken):
        await tokens.verify_user_token(token)
    user = await tokens.issue_user_token(name="u", groups=[], valid_for=timedelta(hours=1))
    with pytest.raises(InvalidToken, match="not a zone token"):
        await verify_zone_token(tokens, user)
    expired = await issue_zone_token(tokens, zone="east", valid_for=timedelta(hours=1), now=NOW)
    with pytest.raises(InvalidToken, match="expired"):
        await verify_zone_token(tokens, expired)
    await revoke_zone_token(tokens, identity.token_id)
    await revoke_zone_token(tokens, identity.token_id)  # idempotent
    with pytest.raises(InvalidToken, match="revoked"):
        await verify_zone_token(tokens, token)
    # a token signed by another global's key
    other_store = open_store("memory")
    await other_store.start()
    foreign = await issue_zone_token(TokenService(other_store), zone="east")
    await other_store.close()
    with pytest.raises(InvalidToken, match="signature"):
        await verify_zone_token(tokens, foreign)


# -- cp run flags ----------------------------------------------------------------------------------------------
def test_cp_run_multizone_flags(tmp_path: Path) -> None:
    import typer

    from isthmus.cli.cp import _multizone_options

    token = tmp_path / "token"
    token.write_text("t")
    ok = _multizone_options("zone", "127.0.0.1:5685", "east", "grpcs://g:5685", token, None)
    assert ok["zone"] == "east" and ok["zone_token_file"] == token
    assert _multizone_options("global", "0.0.0.0:5685", None, None, None, None)["mode"] == "global"
    for args in (
        ("zone", "x:1", None, "grpcs://g:5685", token, None),  # --zone missing
        ("zone", "x:1", "East_1", "grpcs://g:5685", token, None),  # not an RFC 1035 label
        ("zone", "x:1", "east", "http://g:5685", token, None),  # not grpcs
        ("zone", "x:1", "east", "grpcs://g:5685", tmp_path / "missing", None),
        ("global", "x:1", "east", None, None, None),  # --zone without --mode zone
        ("global", "nowhere", None, None, None, None),
        ("central", "x:1", None, None, None, None),
    ):
        with pytest.raises(typer.Exit):
            _multizone_options(*args)
