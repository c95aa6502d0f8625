"""Failover, permissions and routes across zones (issue 9), each zone a network namespace the test creates: a global
control plane on the host, zones ``east`` and ``west`` each with its own address on a bridge, zone control plane
and zone ingress (:class:`isthmus.demo.zones.Zones`). Policies are applied on the global only.

* ``backend`` has an instance in each zone (``backend-east-1``: version v1, ``backend-west-1``: version v2);
  ``client`` and ``other`` are sidecars in east with an explicit outbound to ``backend``.
* A MeshHTTPRoute sends ``/v2`` to the v2 subset, present only in west: west answers, through west's ingress.
* A MeshTrafficPermission allows only ``client`` to reach ``backend``: west's sidecar refuses ``other`` (403).
* Failover: east's backend stops, traffic moves to west and, after outlier ejection, a request loop sees no
  failure; east's backend returns and traffic comes back to east.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from isthmus.demo.netns import Network, can_create
from isthmus.demo.zones import GlobalPorts, Zones, request, wait_until
from tests.conftest import free_port
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

ZONES = ("east", "west")
INGRESS_ADMIN, BACKEND_ADMIN, CLIENT_ADMIN, OTHER_ADMIN = 9901, 9902, 9903, 9904
APP_PORT, BACKEND_INBOUND = 18080, 28080
CLIENT_OUT, OTHER_OUT = 30001, 30002  # the east sidecars' outbound to backend, on east's loopback

MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: backend-from-client
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: client}
    default: {action: Allow}
---
type: MeshCircuitBreaker
mesh: default
name: backend-outliers
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      outlierDetection:
        interval: 1s
        baseEjectionTime: 3s
        maxEjectionPercent: 100
        detectors:
          totalFailures: {consecutive: 1}
          localOriginFailures: {consecutive: 1}
---
type: MeshHTTPRoute
mesh: default
name: backend-v2-path
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      default:
        backendRefs:
        - {kind: MeshServiceSubset, name: backend, tags: {version: v2}}
"""


def _backend(address: str, name: str, version: str) -> str:
    return (
        f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n"
        f"  - port: {BACKEND_INBOUND}\n    servicePort: {APP_PORT}\n    tags:\n      kuma.io/service: backend\n"
        f"      kuma.io/protocol: http\n      version: {version}\n"
    )


def _client(address: str, service: str, inbound: int, outbound: int) -> str:
    return (
        f"type: Dataplane\nmesh: default\nname: {service}-1\nnetworking:\n  address: {address}\n  inbound:\n"
        f"  - port: {inbound}\n    servicePort: {inbound + 1000}\n    tags:\n      kuma.io/service: {service}\n"
        f"      kuma.io/protocol: http\n  outbound:\n  - port: {outbound}\n    tags:\n"
        "      kuma.io/service: backend\n"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    if not can_create():
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{random.randrange(16**4):04x}"
    network = Network(f"iz{tag}", f"10.215.{random.randrange(256)}", ZONES)
    data_dir: Path = tmp_path_factory.mktemp("zones")
    ports = GlobalPorts(api=free_port(), api_tls=free_port(), xds=free_port(), kds=free_port())
    zones: Zones | None = None
    try:
        network.create()
        zones = Zones(data_dir, network, global_ports=ports)
        zones.start_global()
        zones.apply_global(MESH)
        for zone in ZONES:
            zones.start_zone_cp(zone)
            wait_until(lambda z=zone: zones.zone_has(z, "/meshes/default"), 60, f"the mesh in {zone}")  # type: ignore[misc, union-attr]
            zones.start_ingress(zone, INGRESS_ADMIN)
        for zone, version in (("east", "v1"), ("west", "v2")):
            zones.start_app(zone, "backend", f"backend-{zone}-1", APP_PORT, version)
            address = network.zones[zone].address
            zones.start_sidecar(zone, _backend(address, f"backend-{zone}-1", version), BACKEND_ADMIN)
        east = network.zones["east"].address
        zones.start_sidecar("east", _client(east, "client", 28081, CLIENT_OUT), CLIENT_ADMIN)
        zones.start_sidecar("east", _client(east, "other", 28082, OTHER_OUT), OTHER_ADMIN)
        yield zones
    finally:
        if zones is not None:
            zones.stop()
        network.delete()


def _call(world: Zones, outbound: int, path: str = "/") -> httpx.Response:
    """A request from east's loopback to a sidecar's outbound listener there."""
    return world.zone("east").run(request, "GET", f"http://127.0.0.1:{outbound}{path}")


def _instance(world: Zones, path: str = "/") -> str:
    resp = _call(world, CLIENT_OUT, path)
    return str(resp.json()["instance"]) if resp.status_code == 200 else f"HTTP {resp.status_code}"


def _eds(world: Zones, cluster: str) -> list[dict[str, Any]]:
    dump = world.envoy_admin("east", CLIENT_ADMIN, "/config_dump?include_eds").json()
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            if entry["endpoint_config"].get("cluster_name") == cluster:
                return entry["endpoint_config"].get("endpoints", [])  # type: ignore[no-any-return]
    return []


def _ready(world: Zones) -> None:
    """Both zones' instances in the client's endpoints (east local, west through its ingress) and east serving."""

    def two_zones() -> list[dict[str, Any]]:
        groups = _eds(world, "backend")
        return groups if {g.get("locality", {}).get("zone") for g in groups} == set(ZONES) else []

    groups = wait_for(lambda: two_zones(), 120, what="east and west in the client's endpoints")
    by_zone = {g["locality"]["zone"]: g for g in groups}
    assert by_zone["east"].get("priority", 0) == 0 and by_zone["west"]["priority"] == 1
    west = [e["endpoint"]["address"]["socket_address"] for e in by_zone["west"]["lb_endpoints"]]
    assert west == [{"address": world.zone("west").address, "port_value": world.zports.ingress}]
    wait_for(lambda: _instance(world) == "backend-east-1", 60, what="client -> backend in east")


def test_a_route_on_the_global_sends_a_path_to_the_subset_only_in_west(world: Zones) -> None:
    _ready(world)
    wait_for(lambda: _instance(world, "/v2/items") == "backend-west-1", 60, what="/v2 answered by west")
    answers = [_call(world, CLIENT_OUT, f"/v2/items-{i}") for i in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert {(r.json()["instance"], r.json()["version"]) for r in answers} == {("backend-west-1", "v2")}
    assert {r.json()["path"] for r in answers} == {f"/v2/items-{i}" for i in range(10)}
    # other paths stay in the local zone
    assert {_instance(world, f"/items-{i}") for i in range(10)} == {"backend-east-1"}


def test_permissions_apply_across_zones_by_identity(world: Zones) -> None:
    _ready(world)
    wait_for(lambda: _instance(world, "/v2/") == "backend-west-1", 60, what="/v2 answered by west")
    body = _call(world, CLIENT_OUT, "/v2/allowed").json()
    assert body["instance"] == "backend-west-1"
    assert "URI=spiffe://default/client" in body["caller"]  # west's sidecar saw client's identity
    # another identity in the same zone, on the same path to west: refused by west's sidecar
    refused = [_call(world, OTHER_OUT, f"/v2/refused-{i}").status_code for i in range(5)]
    assert refused == [403] * 5
    # and by east's as well
    assert _call(world, OTHER_OUT, "/local").status_code == 403


def test_failover_to_west_and_back_to_east(world: Zones) -> None:
    _ready(world)
    assert {_instance(world, f"/before-{i}") for i in range(10)} == {"backend-east-1"}
    app = world.named["app-backend-east-1"]
    app.stop()

    def fails_over() -> bool:
        return all(_instance(world, "/loop") == "backend-west-1" for _ in range(5))

    wait_for(fails_over, 60, what="failover to west")
    # after the outlier-ejection window: no failure for 30 consecutive requests, all answered by west
    answers = [_call(world, CLIENT_OUT, f"/failover-{i}") for i in range(30)]
    assert [r.status_code for r in answers] == [200] * 30
    assert {r.json()["instance"] for r in answers} == {"backend-west-1"}
    # the identity check holds while west serves: other is still refused
    assert _call(world, OTHER_OUT, "/during-failover").status_code == 403

    app.start()
    wait_for(
        lambda: all(_instance(world, "/back") == "backend-east-1" for _ in range(5)),
        90,
        what="traffic back in east",
    )
    assert {_instance(world, f"/after-{i}") for i in range(10)} == {"backend-east-1"}
