"""Identity and access on a real control plane (``--api-localhost-is-admin=false``, data-plane tokens on):
the REST 401/403/200 matrix for user and data-plane tokens, tokens across a restart, the CLI's ``--auth-token``
and ``isthmus generate``, and ADS streams that try another proxy's node id."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from isthmus.xds import types
from tests.e2e.harness import ISTHMUS, ControlPlane, wait_for

MESH: dict[str, Any] = {
    "type": "Mesh",
    "name": "default",
    "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
}


def dataplane(name: str, service: str, port: int) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}],
        },
    }


class Api:
    """The control plane's REST API with a given token (or none)."""

    def __init__(self, cp: ControlPlane, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=cp.url, timeout=10.0, headers=headers)

    def status(self, method: str, path: str, body: Any = None) -> int:
        return self.http.request(method, path, json=body).status_code


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("auth"), extra_args=("--api-localhost-is-admin=false",))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
        plane.http.close()


def admin_token(cp: ControlPlane) -> str:
    path = cp.data_dir / "admin-user-token"
    assert path.stat().st_mode & 0o077 == 0, "the admin token file is readable by others"
    return path.read_text().strip()


@pytest.fixture(scope="module")
def admin(cp: ControlPlane) -> Api:
    api = Api(cp, admin_token(cp))
    assert api.status("PUT", "/meshes/default", MESH) in (200, 201)
    return api


def issue(admin: Api, kind: str, body: dict[str, Any]) -> str:
    response = admin.http.post(f"/tokens/{kind}", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_without_token_only_the_index_answers(cp: ControlPlane, admin: Api) -> None:
    anonymous = Api(cp)
    assert anonymous.status("GET", "/") == 200
    for method, path in (("GET", "/meshes"), ("GET", "/meshes/default/dataplanes"), ("PUT", "/meshes/x")):
        response = anonymous.http.request(method, path, json={"type": "Mesh", "name": "x"})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["status"] == 401 and body["title"] and "Bearer" in body["detail"]
    assert anonymous.status("POST", "/tokens/user", {"name": "me", "validFor": "1h"}) == 401
    assert admin.status("GET", "/meshes/x") == 404  # nothing was stored


def test_invalid_tokens_are_refused(cp: ControlPlane, admin: Api) -> None:
    for token in ("garbage", "a.b.c", admin_token(cp)[:-4] + "AAAA"):
        assert Api(cp, token).status("GET", "/meshes") == 401
    malformed = httpx.get(f"{cp.url}/meshes", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert malformed.status_code == 401


def test_readonly_user_reads_but_cannot_write(cp: ControlPlane, admin: Api) -> None:
    reader = Api(
        cp, issue(admin, "user", {"name": "bob", "groups": ["mesh-system:readonly"], "validFor": "1h"})
    )
    assert reader.status("GET", "/meshes") == 200
    assert reader.status("GET", "/meshes/default") == 200
    response = reader.http.put("/meshes/default/dataplanes/ro-1", json=dataplane("ro-1", "web", 20001))
    assert response.status_code == 403 and response.json()["title"] == "Forbidden"
    assert admin.status("GET", "/meshes/default/dataplanes/ro-1") == 404  # nothing stored
    assert reader.status("DELETE", "/meshes/default") == 403
    assert admin.status("GET", "/meshes/default") == 200
    assert reader.status("POST", "/tokens/user", {"name": "eve", "groups": ["mesh-system:admin"]}) == 403
    assert reader.status("POST", "/tokens/signing-keys/_rotate") == 403
    # an admin user token does everything
    other = Api(cp, issue(admin, "user", {"name": "ann", "groups": ["mesh-system:admin"], "validFor": "1h"}))
    assert other.status("PUT", "/meshes/default/dataplanes/adm-1", dataplane("adm-1", "web", 20002)) == 201
    assert other.status("DELETE", "/meshes/default/dataplanes/adm-1") == 200


def test_revoked_user_token_is_refused(cp: ControlPlane, admin: Api) -> None:
    token = issue(admin, "user", {"name": "carl", "groups": ["mesh-system:readonly"], "validFor": "1h"})
    assert Api(cp, token).status("GET", "/meshes") == 200
    assert admin.status("POST", "/tokens/user/_revoke", {"token": token}) == 200
    assert Api(cp, token).status("GET", "/meshes") == 401


def test_token_requests_are_validated(admin: Api) -> None:
    response = admin.http.post("/tokens/dataplane", json={"mesh": "nope", "tags": {"bad key!": ["x"]}})
    assert response.status_code == 400
    fields = {p["field"] for p in response.json()["invalid_parameters"]}
    assert fields == {"tags.bad key!"}
    response = admin.http.post("/tokens/dataplane", json={"mesh": "nope"})
    assert response.status_code == 400 and response.json()["invalid_parameters"][0]["field"] == "mesh"
    response = admin.http.post("/tokens/user", json={"name": "x", "validFor": "soon"})
    assert response.status_code == 400 and response.json()["invalid_parameters"][0]["field"] == "validFor"


def test_dataplane_token_registers_only_its_own_dataplane(cp: ControlPlane, admin: Api) -> None:
    by_name = Api(cp, issue(admin, "dataplane", {"mesh": "default", "name": "web-1", "validFor": "1h"}))
    by_tag = Api(
        cp,
        issue(
            admin, "dataplane", {"mesh": "default", "tags": {"kuma.io/service": ["web"]}, "type": "dataplane"}
        ),
    )
    assert by_name.status("GET", "/") == 200
    assert by_name.status("PUT", "/meshes/default/dataplanes/web-1", dataplane("web-1", "web", 21001)) == 201
    assert by_name.status("GET", "/meshes/default/dataplanes/web-1") == 200
    assert by_name.status("PUT", "/meshes/default/dataplanes/web-2", dataplane("web-2", "web", 21002)) == 403
    assert by_name.status("GET", "/meshes/default/dataplanes") == 403
    assert by_name.status("GET", "/meshes") == 403
    assert by_name.status("GET", "/meshes/default/dataplanes/web-1/_config") == 403
    assert by_name.status("POST", "/tokens/dataplane", {"mesh": "default"}) == 403
    # a token scoped by tags: any name, only with tags it allows
    assert by_tag.status("PUT", "/meshes/default/dataplanes/web-3", dataplane("web-3", "web", 21003)) == 201
    assert by_tag.status("PUT", "/meshes/default/dataplanes/db-9", dataplane("db-9", "db", 21004)) == 403
    assert admin.status("GET", "/meshes/default/dataplanes/db-9") == 404
    assert admin.status("PUT", "/meshes/default/dataplanes/db-1", dataplane("db-1", "db", 21005)) == 201
    # it cannot take over or delete a Dataplane whose stored tags it does not allow
    assert by_tag.status("PUT", "/meshes/default/dataplanes/db-1", dataplane("db-1", "web", 21005)) == 403
    assert by_tag.status("DELETE", "/meshes/default/dataplanes/db-1") == 403
    assert (
        admin.http.get("/meshes/default/dataplanes/db-1").json()["networking"]["inbound"][0]["tags"][
            "kuma.io/service"
        ]
        == "db"
    )
    assert by_tag.status("DELETE", "/meshes/default/dataplanes/web-3") == 200
    assert by_name.status("DELETE", "/meshes/default/dataplanes/web-1") == 200
    # revoked: refused
    token = by_name.http.headers["Authorization"].removeprefix("Bearer ")
    assert admin.status("POST", "/tokens/dataplane/_revoke", {"token": token}) == 200
    assert by_name.status("GET", "/") == 401


def test_signing_key_rotation_over_rest(cp: ControlPlane, admin: Api) -> None:
    old = Api(cp, issue(admin, "dataplane", {"mesh": "default", "name": "rot-1"}))
    keys = admin.http.get("/tokens/signing-keys", params={"mesh": "default"}).json()
    rotated = admin.http.post("/tokens/signing-keys/_rotate", params={"mesh": "default"}).json()
    assert rotated["serial"] == keys["latest"] + 1
    new = Api(cp, issue(admin, "dataplane", {"mesh": "default", "name": "rot-1"}))
    assert old.status("GET", "/") == 200 and new.status("GET", "/") == 200
    latest = admin.http.delete(f"/tokens/signing-keys/{rotated['serial']}", params={"mesh": "default"})
    assert latest.status_code == 409  # the latest key signs new tokens: rotate first
    response = admin.http.delete(f"/tokens/signing-keys/{keys['latest']}", params={"mesh": "default"})
    assert response.status_code == 200, response.text
    assert old.status("GET", "/") == 401
    assert new.status("GET", "/") == 200


def run_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ISTHMUS_AUTH_TOKEN"}
    if token is not None:
        env["ISTHMUS_AUTH_TOKEN"] = token
    return subprocess.run([*ISTHMUS, *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_generate_and_auth_token(cp: ControlPlane, admin: Api) -> None:
    token = admin_token(cp)
    refused = run_cli("generate", "user-token", "--name", "x", "--valid-for", "1h", "--cp-address", cp.url)
    assert (
        refused.returncode == 1 and "--auth-token" in refused.stderr and len(refused.stderr.splitlines()) == 1
    )
    made = run_cli(
        "generate", "user-token", "--name", "dora", "--group", "mesh-system:readonly", "--valid-for", "24h",
        "--cp-address", cp.url, "--auth-token", token,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    readonly = made.stdout.strip()
    assert Api(cp, readonly).status("GET", "/meshes") == 200
    listed = run_cli("get", "meshes", "--cp-address", cp.url, token=readonly)  # from ISTHMUS_AUTH_TOKEN
    assert listed.returncode == 0 and "default" in listed.stdout, listed.stderr
    denied = run_cli("delete", "mesh", "default", "--cp-address", cp.url, "--auth-token", readonly)
    assert denied.returncode == 1 and "read" in denied.stderr
    dp_token = run_cli(
        "generate", "dataplane-token", "--mesh", "default", "--name", "cli-1", "--tag", "kuma.io/service=web",
        "--valid-for", "1h", "--cp-address", cp.url, token=token,
    )  # fmt: skip
    assert dp_token.returncode == 0, dp_token.stderr
    api = Api(cp, dp_token.stdout.strip())
    assert api.status("PUT", "/meshes/default/dataplanes/cli-1", dataplane("cli-1", "db", 22001)) == 403
    assert api.status("PUT", "/meshes/default/dataplanes/cli-1", dataplane("cli-1", "web", 22001)) == 201
    assert api.status("DELETE", "/meshes/default/dataplanes/cli-1") == 200


# -- ADS ---------------------------------------------------------------------------------------------------------


def channel(cp: ControlPlane) -> grpc.aio.Channel:
    target = f"127.0.0.1:{cp.xds_port}"
    if cp.ca_file.exists():
        credentials = grpc.ssl_channel_credentials(root_certificates=cp.ca_file.read_bytes())
        return grpc.aio.secure_channel(target, credentials)
    return grpc.aio.insecure_channel(target)


async def ads_attempt(
    cp: ControlPlane, node_id: str, token: str | None
) -> tuple[list[str], grpc.StatusCode | None]:
    """Ask for clusters as ``node_id``: the type URLs received, and the status the stream ended with (None when
    it is still open after the first response). A refused stream is refused before anything, secrets included,
    is sent."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    received: list[str] = []
    async with channel(cp) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(metadata=metadata)
        node = base_pb2.Node(id=node_id, cluster="web")
        try:
            # one request first: a second write racing the server's refusal can end the call with INTERNAL in
            # grpc core instead of the status the server gave
            await call.write(discovery_pb2.DiscoveryRequest(type_url=types.CLUSTER, node=node))
            async with asyncio.timeout(15):
                message = await call.read()
            if message is not grpc.aio.EOF:
                received.append(message.type_url)
                call.cancel()
                return received, None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # refused: the call's status tells how
        async with asyncio.timeout(15):
            return received, await call.code()


def test_ads_stream_needs_the_nodes_own_token(cp: ControlPlane, admin: Api) -> None:
    assert admin.status("PUT", "/meshes/default/dataplanes/ads-web", dataplane("ads-web", "web", 23001)) in (
        200,
        201,
    )
    assert admin.status("PUT", "/meshes/default/dataplanes/ads-db", dataplane("ads-db", "db", 23002)) in (
        200,
        201,
    )
    wait_for(
        lambda: admin.http.get("/meshes/default/dataplanes/ads-db/_config").status_code == 200,
        30,
        what="the configuration of ads-db",
    )
    web_token = issue(admin, "dataplane", {"mesh": "default", "name": "ads-web"})
    web_tag_token = issue(admin, "dataplane", {"mesh": "default", "tags": {"kuma.io/service": ["web"]}})
    db_token = issue(admin, "dataplane", {"mesh": "default", "name": "ads-db"})
    user = admin_token(cp)

    async def scenario() -> None:
        victim = "default.ads-db"
        assert await ads_attempt(cp, victim, None) == ([], grpc.StatusCode.UNAUTHENTICATED)
        assert await ads_attempt(cp, victim, "garbage") == ([], grpc.StatusCode.UNAUTHENTICATED)
        assert await ads_attempt(cp, victim, user) == ([], grpc.StatusCode.UNAUTHENTICATED)
        assert await ads_attempt(cp, victim, web_token) == ([], grpc.StatusCode.PERMISSION_DENIED)
        assert await ads_attempt(cp, victim, web_tag_token) == ([], grpc.StatusCode.PERMISSION_DENIED)
        assert await ads_attempt(cp, "other.ads-db", db_token) == ([], grpc.StatusCode.PERMISSION_DENIED)
        assert await ads_attempt(cp, victim, db_token) == ([types.CLUSTER], None)

    asyncio.run(scenario())


# -- last: a restart ---------------------------------------------------------------------------------------------


def test_tokens_survive_a_restart(cp: ControlPlane, admin: Api) -> None:
    reader_token = issue(
        admin, "user", {"name": "rita", "groups": ["mesh-system:readonly"], "validFor": "1h"}
    )
    dp_token = issue(admin, "dataplane", {"mesh": "default", "name": "after-restart"})
    before = admin_token(cp)
    cp.stop()
    cp.start()
    assert admin_token(cp) == before  # the bootstrap admin token is kept in the store
    assert Api(cp, reader_token).status("GET", "/meshes") == 200
    assert Api(cp, reader_token).status("PUT", "/meshes/default", MESH) == 403
    assert Api(cp, before).status("GET", "/meshes/default") == 200
    assert (
        Api(cp, dp_token).status(
            "PUT", "/meshes/default/dataplanes/after-restart", dataplane("after-restart", "web", 24001)
        )
        == 201
    )
