"""The seeds' scenario end to end (issue 9), as ``isthmus demo --multizone`` runs it: a global control plane, zones
``azure`` and ``gcp`` each in a network namespace the test creates (own address on a bridge, own zone control plane
and zone ingress), an Isthmus gateway in each zone as a mesh member and ``catalog`` only in gcp.

* A client calls the azure gateway (key-auth, a response header), whose Kong Service is ``edge-gcp.mesh``: the
  request reaches the gcp gateway (request-transformer, rate-limiting) only through gcp's zone ingress, over mesh
  mTLS the ingress passes through, then catalog; the client sees both gateways' plugins.
* The gcp gateway terminates TLS for its public hostnames with a ``*.gcp.example`` certificate chosen by SNI.
* The global control plane restarts: the zones keep serving, a policy applied after it returns reaches every zone
  and their Envoys; a zone control plane restarts: its data planes keep serving.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from isthmus.demo.multizone import (
    GATEWAY_ADMIN,
    GATEWAY_TLS_PORT,
    INGRESS_ADMIN,
    REMOTE_HOSTNAME,
    SIDECAR_ADMIN,
    MultiZoneOptions,
    Seeds,
)
from isthmus.demo.netns import can_create
from isthmus.demo.zones import GlobalPorts
from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeds]:
    if not can_create():
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{random.randrange(16**4):04x}"
    options = MultiZoneOptions(
        data_dir=str(tmp_path_factory.mktemp("seeds")),
        prefix=f"is{tag}",
        subnet=f"10.214.{random.randrange(256)}",
        global_ports=GlobalPorts(api=free_port(), api_tls=free_port(), xds=free_port(), kds=free_port()),
    )
    world = Seeds(options)
    try:
        world.start(say=lambda _: None)
        yield world
    finally:
        world.stop()


def _eds(seeds: Seeds, zone: str, admin: int, cluster: str) -> list[dict[str, Any]]:
    dump = seeds.world.envoy_admin(zone, admin, "/config_dump?include_eds").json()
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            if entry["endpoint_config"].get("cluster_name") == cluster:
                return entry["endpoint_config"].get("endpoints", [])  # type: ignore[no-any-return]
    return []


def _stat(seeds: Seeds, zone: str, admin: int, name: str) -> int:
    for line in seeds.world.envoy_admin(zone, admin, "/stats").text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _served_certificate(address: str, port: int, sni: str) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_client_crosses_from_the_azure_gateway_to_catalog_in_gcp(seeds: Seeds) -> None:
    response = seeds.shop("/shop/items")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["service"] == "catalog" and body["instance"] == "catalog-gcp-1"
    assert body["path"] == "/items"  # azure strips /shop and adds /catalog; gcp strips /catalog
    # both gateways' plugins: azure's key-auth and response header, gcp's request-transformer and rate limit
    assert response.headers["x-azure-gateway"] == "edge-azure"
    assert body["headers"]["x-gcp-gateway"] == "edge-gcp"
    assert response.headers.get("ratelimit-limit") == "100000"
    assert seeds.shop("/shop/items", key=None).status_code == 401
    assert seeds.shop("/shop/items", key="wrong").status_code == 401
    # catalog was called by the gcp gateway over mesh mTLS (its identity in the client certificate)
    assert "URI=spiffe://default/edge-gcp" in body["caller"]


def test_traffic_crosses_only_through_gcps_ingress_which_holds_no_key(seeds: Seeds) -> None:
    gcp_ingress = f"{seeds.network.zones['gcp'].address}"
    # the azure gateway's endpoints for edge-gcp: gcp's ingress, nothing else
    groups = wait_for(lambda: _eds(seeds, "azure", GATEWAY_ADMIN, "edge-gcp"), 30, what="edge-gcp in azure")
    addresses = [e["endpoint"]["address"]["socket_address"] for g in groups for e in g["lb_endpoints"]]
    assert addresses == [{"address": gcp_ingress, "port_value": seeds.world.zports.ingress}]
    assert {g["locality"]["zone"] for g in groups} == {"gcp"}
    # azure has no endpoint of catalog at all: only the gcp gateway reaches it
    before = _stat(seeds, "gcp", INGRESS_ADMIN, "tcp.default_edge-gcp.downstream_cx_total")
    for _ in range(3):
        # new connections from the azure gateway: close its pool by asking for a fresh connection each time
        assert seeds.shop("/shop/x").status_code == 200
    assert _stat(seeds, "gcp", INGRESS_ADMIN, "tcp.default_edge-gcp.downstream_cx_total") >= max(before, 1)
    # the ingress routes on SNI without terminating TLS: no secrets, no TLS transport sockets
    dump = seeds.world.envoy_admin("gcp", INGRESS_ADMIN, "/config_dump").json()
    parts = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
    listeners = str(parts["ListenersConfigDump"].get("dynamic_listeners", []))
    clusters = str(parts["ClustersConfigDump"].get("dynamic_active_clusters", []))
    assert "tls_inspector" in listeners and "transport_socket" not in listeners + clusters
    secrets = parts.get("SecretsConfigDump", {})
    assert not secrets.get("dynamic_active_secrets") and not secrets.get("static_secrets")
    # the edge-gcp ingress route is Kuma's SNI of the service
    assert "edge-gcp{mesh=default}" in listeners


class Capture:
    """Frames seen on a host-side link (an AF_PACKET socket, root only), read in a thread while traffic runs."""

    def __init__(self, link: str) -> None:
        import threading

        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind((link, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> list[bytes]:
        self.running = False
        self.thread.join(5)
        self.sock.close()
        return self.frames


def _tcp_payloads(frames: list[bytes], address: str, port: int) -> list[bytes]:
    """TCP payloads of IPv4 frames to or from ``address:port``."""
    wanted = socket.inet_aton(address)
    out = []
    for frame in frames:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        src, dst = ip[12:16], ip[16:20]
        tcp = ip[ihl:total]
        sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
        if (dst == wanted and dport == port) or (src == wanted and sport == port):
            payload = tcp[(tcp[12] >> 4) * 4 :]
            if payload:
                out.append(payload)
    return out


def test_the_bytes_between_the_zones_are_tls(seeds: Seeds) -> None:
    """What crosses into gcp's namespace towards its ingress, read off the wire: TLS records only, and none of the
    request's plain text (path, headers, the catalog's answer)."""
    names = list(seeds.network.zones)
    link = seeds.network._veth(names.index("gcp"))[0]
    gcp = seeds.network.zones["gcp"].address
    capture = Capture(link)
    try:
        for _ in range(5):
            response = seeds.shop("/shop/wire-check")
            assert response.status_code == 200, response.text
    finally:
        frames = capture.stop()
    payloads = _tcp_payloads(frames, gcp, seeds.world.zports.ingress)
    assert payloads, "no traffic to gcp's ingress was seen on the wire"
    records = [p for p in payloads if len(p) >= 3 and p[0] in (0x14, 0x15, 0x16, 0x17) and p[1] == 0x03]
    assert records, "no TLS record header on the wire"
    wire = b"".join(payloads)
    for plain in (b"wire-check", b"apikey", b"x-gcp-gateway", b"catalog-gcp-1", b"HTTP/1.1"):
        assert plain not in wire, f"{plain!r} crossed between the zones in plain text"


def test_gcp_gateway_terminates_tls_with_its_wildcard_certificate(seeds: Seeds) -> None:
    for sni in ("shop.gcp.example", "api.gcp.example"):
        response = seeds.public("/catalog/items", sni=sni)  # verified against the demo's public CA
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["service"] == "catalog" and body["headers"]["x-gcp-gateway"] == "edge-gcp"
        assert response.headers.get("ratelimit-limit") == "100000"
        assert "x-azure-gateway" not in response.headers
    address, port = seeds.gcp_https()
    assert port == GATEWAY_TLS_PORT
    served = _served_certificate(address, port, "shop.gcp.example")
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["*.gcp.example"]


def _edge_gcp_in_azure(seeds: Seeds) -> list[dict[str, Any]]:
    items = (seeds.world.zone_has("azure", "/meshes/default/meshservices") or {}).get("items", [])
    return [m for m in items if m["labels"].get("kuma.io/display-name") == "edge-gcp"]


def test_gcp_gateways_meshservice_reaches_azure_with_a_generated_hostname(seeds: Seeds) -> None:
    (copy,) = wait_for(lambda: _edge_gcp_in_azure(seeds), 60, what="edge-gcp's MeshService in azure")
    assert copy["name"].startswith("edge-gcp-")  # the global's name for gcp's resource
    assert copy["labels"]["kuma.io/origin"] == "global" and copy["labels"]["kuma.io/zone"] == "gcp"

    def hostnames() -> list[str]:
        (ms,) = _edge_gcp_in_azure(seeds)
        return [a["hostname"] for a in (ms.get("status") or {}).get("addresses", [])]

    assert wait_for(hostnames, 60, what="a hostname for it in azure") == [REMOTE_HOSTNAME]
    # read-only in azure: it is gcp's
    resp = seeds.world.zone_call("azure", "DELETE", f"/meshes/default/meshservices/{copy['name']}")
    assert resp.status_code == 400


def _all_ok(seeds: Seeds, count: int) -> list[int]:
    return [seeds.shop(f"/shop/loop-{i}").status_code for i in range(count)]


def _has(seeds: Seeds, zone: str, path: str) -> Any:
    return seeds.world.zone_has(zone, path)


def _envoy_has(seeds: Seeds, zone: str, admin: int, text: str) -> bool:
    return text in seeds.world.envoy_admin(zone, admin, "/config_dump").text


def test_global_restart_zones_keep_serving_and_get_later_policies(seeds: Seeds) -> None:
    world = seeds.world
    glob = world.named["global-cp"]
    glob.stop()
    assert _all_ok(seeds, 20) == [200] * 20  # the zones serve on without the global
    assert seeds.public().status_code == 200
    glob.start()
    world.wait_global()
    world.apply_global(
        """type: MeshTimeout
mesh: default
name: a-after-global-restart
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default:
      http: {requestTimeout: 77s}
"""
    )
    for zone in ("azure", "gcp"):
        policy = wait_for(
            functools.partial(_has, seeds, zone, "/meshes/default/meshtimeouts/a-after-global-restart"),
            60,
            what=f"the policy in {zone}",
        )
        assert policy["labels"]["kuma.io/origin"] == "global"
    # and the zones' Envoys: catalog's sidecar in gcp, the gateway's mesh inbound in azure
    wait_for(functools.partial(_envoy_has, seeds, "gcp", SIDECAR_ADMIN, '"77s"'), 60, what="77s in gcp")
    wait_for(functools.partial(_envoy_has, seeds, "azure", GATEWAY_ADMIN, '"77s"'), 60, what="77s in azure")
    assert _all_ok(seeds, 10) == [200] * 10


def test_zone_cp_restart_its_data_planes_keep_serving(seeds: Seeds) -> None:
    world = seeds.world
    for zone in ("gcp", "azure"):
        cp = world.named[f"{zone}-cp"]
        cp.stop()
        assert _all_ok(seeds, 20) == [200] * 20  # its proxies keep their configuration
        assert seeds.public().status_code == 200
        cp.start()
        world.wait_zone_cp(zone)
        assert _all_ok(seeds, 20) == [200] * 20
    # the restarted zones are back on the global
    wait_for(
        lambda: all(z["online"] for z in _zones(seeds)),
        60,
        what="both zones online",
    )
    assert _all_ok(seeds, 10) == [200] * 10


def _zones(seeds: Seeds) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = seeds.world.global_call("GET", "/zones+insights").json()["items"]
    assert {z["name"] for z in items} == {"azure", "gcp"}
    return items


def test_demo_multizone_without_root_exits_1_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to drop to an unprivileged user")
    done = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            *ISTHMUS,
            "demo",
            "--multizone",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: isthmus demo --multizone creates network namespaces: run it as root (with iproute2's ip)"
    ]
