"""``isthmus demo --multizone``: the seeds' scenario, "two clouds, two gateways".

A global control plane and two zones, ``azure`` and ``gcp``, each a network namespace with its own address
(:mod:`isthmus.demo.netns`), its zone control plane and zone ingress (:mod:`isthmus.demo.zones`):

    client --HTTP, apikey--> edge-azure (Kong: key-auth, response-transformer)
        --mesh mTLS to edge-gcp.svc.gcp.mesh.local, through gcp's zone ingress (SNI passthrough)-->
    edge-gcp (Kong: request-transformer, rate-limiting) --mesh mTLS--> catalog (only in gcp)

    client --HTTPS, SNI shop.gcp.example (a *.gcp.example certificate)--> edge-gcp --> catalog

The azure gateway's Kong Service names the gcp gateway by the hostname azure generates for gcp's ``edge-gcp``
MeshService (synced gcp -> global -> azure); azure has no route to gcp's workloads but gcp's ingress, and the
ingress never holds a key for that traffic.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from isthmus.demo.netns import Network, can_create
from isthmus.demo.zones import GlobalPorts, Zones, request, wait_until

ZONES = ("azure", "gcp")
GATEWAY_PORT = 8000  # both gateways' HTTP proxy listener, on their zone's address
GATEWAY_TLS_PORT = 8443  # gcp's HTTPS listener (the *.gcp.example certificate)
INGRESS_ADMIN, GATEWAY_ADMIN, SIDECAR_ADMIN = 9901, 9902, 9903
CATALOG_APP, CATALOG_INBOUND = 18080, 28080
API_KEY = "alice-secret"
PUBLIC_HOST = "shop.gcp.example"

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
name: catalog-from-edge-gcp
spec:
  targetRef: {kind: MeshService, name: catalog}
  from:
  - targetRef: {kind: MeshService, name: edge-gcp}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: edge-gcp-from-edge-azure
spec:
  targetRef: {kind: MeshService, name: edge-gcp}
  from:
  - targetRef: {kind: MeshService, name: edge-azure}
    default: {action: Allow}
"""

# the gcp gateway's MeshService (gateways get none generated): made in gcp, it reaches azure through the global
GATEWAY_SERVICE = f"""type: MeshService
mesh: default
name: edge-gcp
labels:
  kuma.io/env: universal
spec:
  selector:
    dataplaneTags:
      kuma.io/service: edge-gcp
  ports:
  - port: {GATEWAY_PORT}
    targetPort: {GATEWAY_PORT}
    appProtocol: http
"""
REMOTE_HOSTNAME = "edge-gcp.svc.gcp.mesh.local"  # Kuma's synced-universal-mesh-service template in azure

# fixed ids: applying the demo's Kong configuration again changes nothing
_IDS = {
    "gcp-transformer": "6f1c2a52-0000-4000-8000-000000000001",
    "gcp-rate-limit": "6f1c2a52-0000-4000-8000-000000000002",
    "gcp-certificate": "6f1c2a52-0000-4000-8000-000000000003",
    "azure-key-auth": "6f1c2a52-0000-4000-8000-000000000004",
    "azure-header": "6f1c2a52-0000-4000-8000-000000000005",
}


@dataclass(frozen=True)
class MultiZoneOptions:
    data_dir: str = ".isthmus-demo-multizone"
    prefix: str = "isthmus"  # namespaces isthmus-azure, isthmus-gcp; bridge isthmusbr
    subnet: str = "10.213.0"  # the bridge 10.213.0.1, azure .2, gcp .3
    global_ports: GlobalPorts = field(default_factory=GlobalPorts)
    check: bool = False


def wildcard_certificate(directory: Path) -> tuple[str, str]:
    """A demo public CA (``directory/public-ca.crt``, for curl --cacert) and a ``*.gcp.example`` certificate
    it signed: (certificate PEM, key PEM)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Isthmus demo public CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.gcp.example")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.gcp.example")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "public-ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


class Seeds:
    """The scenario's processes and configuration (also driven by tests/e2e/test_multizone_seeds.py)."""

    def __init__(self, options: MultiZoneOptions) -> None:
        self.options = options
        self.dir = Path(options.data_dir).resolve()
        self.network = Network(options.prefix, options.subnet, ZONES)
        self.zones: Zones | None = None

    @property
    def world(self) -> Zones:
        assert self.zones is not None, "start() first"
        return self.zones

    def azure_url(self, path: str = "/") -> str:
        return f"http://{self.network.zones['azure'].address}:{GATEWAY_PORT}{path}"

    def gcp_https(self) -> tuple[str, int]:
        return self.network.zones["gcp"].address, GATEWAY_TLS_PORT

    def start(self, say: Any = print) -> None:
        for zone in ZONES:  # a previous run's zone state (stores, tokens, work dirs) is the demo's own
            shutil.rmtree(self.dir / zone, ignore_errors=True)
        shutil.rmtree(self.dir / "global", ignore_errors=True)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        say(f"Creating network namespaces {', '.join(z.netns for z in self.network.zones.values())} ...")
        self.network.create()
        world = self.zones = Zones(self.dir, self.network, global_ports=self.options.global_ports)
        say(f"Starting the global control plane (KDS on {world.kds_url}) ...")
        world.start_global()
        world.apply_global(MESH)
        for zone in ZONES:
            say(
                f"Starting zone {zone} ({self.network.zones[zone].address}): control plane and zone ingress ..."
            )
            world.start_zone_cp(zone)
            wait_until(lambda z=zone: world.zone_has(z, "/meshes/default"), 60, f"the mesh in {zone}")  # type: ignore[misc]
            world.start_ingress(zone, INGRESS_ADMIN)
        gcp_address = self.network.zones["gcp"].address
        say("Starting catalog (gcp only) with its sidecar, and a gateway in each zone ...")
        world.start_app("gcp", "catalog", "catalog-gcp-1", CATALOG_APP)
        world.start_sidecar(
            "gcp",
            f"type: Dataplane\nmesh: default\nname: catalog-1\nnetworking:\n  address: {gcp_address}\n"
            f"  inbound:\n  - port: {CATALOG_INBOUND}\n    servicePort: {CATALOG_APP}\n    tags:\n"
            "      kuma.io/service: catalog\n      kuma.io/protocol: http\n",
            SIDECAR_ADMIN,
        )
        world.start_gateway("gcp", "edge-gcp-1", "edge-gcp", GATEWAY_PORT, GATEWAY_ADMIN, GATEWAY_TLS_PORT)
        world.apply_zone("gcp", GATEWAY_SERVICE)  # synced to azure, named there edge-gcp.svc.gcp.mesh.local
        world.start_gateway("azure", "edge-azure-1", "edge-azure", GATEWAY_PORT, GATEWAY_ADMIN)
        self.configure_kong()
        say("Waiting for a request to cross from azure to gcp ...")
        try:
            wait_until(self.crosses, 120, "client -> edge-azure -> gcp ingress -> edge-gcp -> catalog")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {self.diagnose()}") from None

    def diagnose(self) -> str:
        """What the azure gateway has (its Envoy's listeners, its control plane's view), for an error message."""

        def listeners() -> str:
            return self.world.envoy_admin("azure", GATEWAY_ADMIN, "/listeners").text

        def insight() -> str:
            return self.world.zone_call(
                "azure", "GET", "/meshes/default/dataplanes+insights/edge-azure-1"
            ).text

        parts = []
        for what, call in (("azure gateway listeners", listeners), ("its insight", insight)):
            try:
                parts.append(f"{what}: {' '.join(call().split())[:600]}")
            except Exception as exc:  # a diagnosis must not hide the error it explains
                parts.append(f"{what}: {exc!r}")
        return "; ".join(parts)

    def configure_kong(self) -> None:
        world = self.world
        cert, key = wildcard_certificate(self.dir)
        # gcp: catalog behind its public hostnames, with gcp's own plugins
        world.kong("gcp", "PUT", "/services/catalog", json={"url": "http://catalog.mesh/"})
        world.kong("gcp", "PUT", "/services/catalog/routes/catalog", json={"paths": ["/catalog"]})
        world.kong(
            "gcp", "PUT", f"/plugins/{_IDS['gcp-transformer']}",
            json={"name": "request-transformer", "route": {"name": "catalog"},
                  "config": {"add": {"headers": ["x-gcp-gateway:edge-gcp"]}}},
        )  # fmt: skip
        world.kong(
            "gcp", "PUT", f"/plugins/{_IDS['gcp-rate-limit']}",
            json={"name": "rate-limiting", "route": {"name": "catalog"},
                  "config": {"minute": 100000, "policy": "local"}},
        )  # fmt: skip
        world.kong(
            "gcp",
            "PUT",
            f"/certificates/{_IDS['gcp-certificate']}",
            json={"cert": cert, "key": key, "snis": ["*.gcp.example"]},
        )
        # azure: /shop reaches the gcp gateway by its mesh name, behind key-auth
        world.kong("azure", "PUT", "/services/shop", json={"url": f"http://{REMOTE_HOSTNAME}/catalog"})
        world.kong("azure", "PUT", "/services/shop/routes/shop", json={"paths": ["/shop"]})
        world.kong(
            "azure", "PUT", f"/plugins/{_IDS['azure-key-auth']}",
            json={"name": "key-auth", "service": {"name": "shop"}},
        )  # fmt: skip
        world.kong(
            "azure", "PUT", f"/plugins/{_IDS['azure-header']}",
            json={"name": "response-transformer", "service": {"name": "shop"},
                  "config": {"add": {"headers": ["x-azure-gateway:edge-azure"]}}},
        )  # fmt: skip
        world.kong("azure", "PUT", "/consumers/alice", json={})
        keys = world.kong("azure", "GET", "/consumers/alice/key-auth").get("data", [])
        if not any(k.get("key") == API_KEY for k in keys):
            world.kong("azure", "POST", "/consumers/alice/key-auth", json={"key": API_KEY})

    def shop(self, path: str = "/shop/items", key: str | None = API_KEY) -> httpx.Response:
        """The client's call to the azure gateway (from the host)."""
        return request("GET", self.azure_url(path), headers={"apikey": key} if key else {})

    def crosses(self) -> bool:
        resp = self.shop()
        return resp.status_code == 200 and resp.json().get("service") == "catalog"

    def public(self, path: str = "/catalog/items", sni: str = PUBLIC_HOST) -> httpx.Response:
        """A client's HTTPS call to the gcp gateway with ``sni``, verifying the *.gcp.example certificate."""
        address, port = self.gcp_https()
        context = ssl.create_default_context(cafile=str(self.dir / "public-ca.crt"))
        return _get_with_address(context, sni, address, port, path)

    def instructions(self) -> str:
        azure = self.network.zones["azure"]
        gcp = self.network.zones["gcp"]
        g = self.options.global_ports
        return f"""Two clouds, two gateways: zones azure ({azure.address}, namespace {azure.netns}) and gcp
({gcp.address}, namespace {gcp.netns}); the global control plane on http://127.0.0.1:{g.api} (KDS on
{self.network.host_address}:{g.kds}). Try, as root, in another terminal (venv active):

  curl -s -H 'apikey: {API_KEY}' {self.azure_url("/shop/items")}    # azure gateway -> gcp gateway -> catalog
  curl -si {self.azure_url("/shop/items")}                      # 401: azure's key-auth
  curl -s --cacert {self.dir / "public-ca.crt"} --resolve {PUBLIC_HOST}:{GATEWAY_TLS_PORT}:{gcp.address} \\
       https://{PUBLIC_HOST}:{GATEWAY_TLS_PORT}/catalog/items          # gcp's *.gcp.example certificate
  isthmus get zones --cp-address http://127.0.0.1:{g.api}
  ip netns exec {gcp.netns} isthmus get dataplanes                      # the gcp zone control plane
  ip netns exec {gcp.netns} curl -s 127.0.0.1:{INGRESS_ADMIN}/stats | grep edge-gcp   # gcp's ingress passes it

Logs: {self.dir / "logs"}.  Press Ctrl-C to stop everything (namespaces included).
"""

    def stop(self) -> None:
        if self.zones is not None:
            self.zones.stop()
        self.network.delete()


def _get_with_address(
    context: ssl.SSLContext, sni: str, address: str, port: int, path: str
) -> httpx.Response:
    """GET https://<sni>:<port><path> connecting to ``address`` (curl's --resolve)."""
    transport = httpx.HTTPTransport(verify=context)
    with httpx.Client(transport=transport, timeout=10) as client:
        req = client.build_request("GET", f"https://{address}:{port}{path}", headers={"host": sni})
        req.extensions["sni_hostname"] = sni
        return client.send(req)


def run_multizone(options: MultiZoneOptions) -> int:
    if not can_create():
        print("Error: isthmus demo --multizone creates network namespaces: run it as root (with iproute2's ip)",
              file=sys.stderr)  # fmt: skip
        return 1
    seeds = Seeds(options)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        seeds.start()
        body = seeds.shop().json()
        print(
            f"\nA request crossed zones: {body['service']} answered {body['instance']} to the azure gateway\n"
        )
        if options.check:
            return 0
        print(seeds.instructions())
        stop.wait()
        return 0
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Stopping the demo ...")
        seeds.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
