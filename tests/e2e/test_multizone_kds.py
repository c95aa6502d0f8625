"""End to end: a global control plane and two zone control planes (real processes on loopback, separate data
directories, KDS over TLS with zone tokens) and real Envoys in the zones."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, App, ControlPlane, Sidecar, wait_for

pytestmark = pytest.mark.e2e

MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""


def timeout_policy(name: str, request_timeout: str) -> str:
    """A MeshTimeout on every inbound; a name before the initial policy's (mesh-timeout-all-default) wins."""
    return f"""
type: MeshTimeout
mesh: default
name: {name}
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default:
      http: {{requestTimeout: {request_timeout}}}
"""


def dataplane(name: str, service: str, inbound_port: int, app_port: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound_port}
    servicePort: {app_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
"""


class MultiZone:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kds_port = free_port()
        self.kds = f"grpcs://127.0.0.1:{self.kds_port}"
        self.glob = ControlPlane(
            self._dir("global"),
            extra_args=("--mode", "global", "--kds-address", f"127.0.0.1:{self.kds_port}"),
        )
        self.zones: dict[str, ControlPlane] = {}
        self.stoppables: list[Any] = []

    def _dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def zone_token(self, zone: str) -> str:
        resp = self.glob.http.post("/tokens/zone", json={"zone": zone})
        assert resp.status_code == 200, resp.text
        return resp.text

    def zone(self, name: str, token: str | None = None) -> ControlPlane:
        tmp = self._dir(f"zone-{name}")
        token_file = tmp / "zone-token"
        token_file.write_text(token if token is not None else self.zone_token(name))
        cp = ControlPlane(
            tmp,
            extra_args=(
                "--mode",
                "zone",
                "--zone",
                name,
                "--global-address",
                self.kds,
                "--zone-token-file",
                str(token_file),
                "--ca-cert-file",
                str(self.glob.ca_file),
            ),
        )
        self.zones[name] = cp
        return cp.start()

    def close(self) -> None:
        for item in reversed(self.stoppables):
            item.stop()
        for cp in self.zones.values():
            cp.stop()
        self.glob.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiZone]:
    mz = MultiZone(tmp_path_factory.mktemp("multizone"))
    try:
        mz.glob.start()
        mz.glob.apply(MESH)
        mz.zone("east")
        mz.zone("west")
        yield mz
    finally:
        mz.close()


def has(cp: ControlPlane, path: str) -> Any:
    resp = cp.http.get(path)
    return resp.json() if resp.status_code == 200 else None


def envoy_has(sidecar: Sidecar, text: str) -> bool:
    return text in httpx.get(f"{sidecar.admin}/config_dump", timeout=5).text


def trusted_cas(sidecar: Sidecar) -> set[int]:
    doc = httpx.get(f"{sidecar.admin}/config_dump?resource=dynamic_active_secrets", timeout=3).json()
    serials: set[int] = set()
    for entry in doc.get("configs", []):
        bundle = (
            entry.get("secret", {}).get("validation_context", {}).get("trusted_ca", {}).get("inline_string")
        )
        if bundle:
            serials |= {c.serial_number for c in x509.load_pem_x509_certificates(bundle.encode())}
    return serials


def zone_sidecar(world: MultiZone, zone: str, name: str) -> Sidecar:
    cp = world.zones[zone]
    wait_for(lambda: has(cp, "/meshes/default"), 30, what=f"the mesh in zone {zone}")
    app = App(cp.tmp, name).start()
    world.stoppables.append(app)
    sidecar = Sidecar(cp.tmp, cp, dataplane(name, name, free_port(), app.port)).start()
    world.stoppables.append(sidecar)
    sidecar.wait_listener("inbound")
    return sidecar


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ISTHMUS, *args], capture_output=True, text=True, timeout=60)


def test_policy_from_global_reaches_zones_and_their_envoys(world: MultiZone) -> None:
    east_dp = zone_sidecar(world, "east", "web")
    west_dp = zone_sidecar(world, "west", "api")
    world.glob.apply(timeout_policy("a-slow-requests", "77s"))
    for cp in world.zones.values():
        policy = wait_for(
            functools.partial(has, cp, "/meshes/default/meshtimeouts/a-slow-requests"),
            30,
            what="the policy in a zone",
        )
        assert policy["labels"]["kuma.io/origin"] == "global"
    for sidecar in (east_dp, west_dp):
        wait_for(functools.partial(envoy_has, sidecar, '"77s"'), 30, what="the policy in a zone's Envoy")
    # one CA per mesh: both zones' proxies trust the global's mesh CA
    east_cas = wait_for(lambda: trusted_cas(east_dp), 30, what="east's trust bundle")
    assert east_cas == wait_for(lambda: trusted_cas(west_dp), 30, what="west's trust bundle")


def test_zone_dataplane_appears_on_the_global_with_zone_labels(world: MultiZone) -> None:
    world.zones["east"].apply(dataplane("db-1", "db", free_port(), free_port()))

    def on_global() -> list[dict[str, Any]]:
        items = has(world.glob, "/meshes/default/dataplanes")["items"]
        return [d for d in items if d.get("labels", {}).get("kuma.io/display-name") == "db-1"]

    (dp,) = wait_for(on_global, 30, what="the zone's Dataplane on the global")
    assert dp["labels"]["kuma.io/zone"] == "east" and dp["labels"]["kuma.io/origin"] == "zone"
    assert dp["name"].startswith("db-1-") and dp["name"] != "db-1"
    # read-only on the global
    resp = world.glob.http.delete(f"/meshes/default/dataplanes/{dp['name']}")
    assert resp.status_code == 400 and "zone 'east'" in resp.json()["detail"]


def test_zone_refuses_global_kinds_and_keeps_its_own_policies(world: MultiZone) -> None:
    east = world.zones["east"]
    resp = east.http.put("/meshes/default", json={"type": "Mesh", "name": "default"})
    assert resp.status_code == 400
    assert "global control plane" in resp.json()["detail"] and world.kds in resp.json()["detail"]
    mesh_file = east.tmp / "mesh.yaml"
    mesh_file.write_text(MESH)
    done = cli("apply", "-f", str(mesh_file), "--cp-address", east.url)
    assert done.returncode == 1 and "global control plane" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # a policy made in the zone stays there, labelled with its origin
    east.apply(timeout_policy("zone-local", "5s"))
    local = has(east, "/meshes/default/meshtimeouts/zone-local")
    assert local["labels"] == {"kuma.io/origin": "zone", "kuma.io/zone": "east"}
    assert has(world.glob, "/meshes/default/meshtimeouts/zone-local") is None
    assert has(world.zones["west"], "/meshes/default/meshtimeouts/zone-local") is None


def test_global_restart(world: MultiZone) -> None:
    east_dp = zone_sidecar(world, "east", "restart-web")
    world.glob.stop()
    # the zones keep serving with what they have
    east = world.zones["east"]
    assert has(east, "/meshes/default/meshtimeouts/a-slow-requests") is not None
    assert envoy_has(east_dp, '"77s"')
    world.glob.start()
    world.glob.apply(timeout_policy("a-after-restart", "88s"))
    for cp in world.zones.values():
        wait_for(
            functools.partial(has, cp, "/meshes/default/meshtimeouts/a-after-restart"),
            40,
            what="the new policy",
        )
    wait_for(lambda: envoy_has(east_dp, '"88s"'), 30, what="the new policy in a zone's Envoy")


def test_get_zones_shows_a_stopped_zone_offline(world: MultiZone) -> None:
    def rows() -> dict[str, str]:
        done = cli("get", "zones", "--cp-address", world.glob.url)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()[1:]
        return {line.split()[0]: line.split()[1] for line in lines}

    wait_for(lambda: rows() == {"east": "Online", "west": "Online"}, 30, what="both zones online")
    world.zones["west"].stop()
    wait_for(lambda: rows() == {"east": "Online", "west": "Offline"}, 30, what="west offline")
    world.zones["west"].start()
    wait_for(lambda: rows()["west"] == "Online", 30, what="west online again")


def test_bad_tokens_are_rejected(world: MultiZone) -> None:
    bogus = world.zone("north", token="not.a.token")
    wait_for(lambda: "UNAUTHENTICATED" in bogus.proc.log(), 30, what="the refusal in the zone's log")  # type: ignore[union-attr]
    borrowed = world.zone("south", token=world.zone_token("east"))
    wait_for(lambda: "PERMISSION_DENIED" in borrowed.proc.log(), 30, what="the refusal in the zone's log")  # type: ignore[union-attr]
    names = {z["name"] for z in has(world.glob, "/zones+insights")["items"]}
    assert "north" not in names and "south" not in names
    assert has(bogus, "/meshes/default") is None
