"""Multi-zone benchmark (issue 9), everything real: a global control plane and three zones, each a network
namespace with its own address, zone control plane and zone ingress (``isthmus.demo.netns`` / ``zones``).

Data path, in interleaved wrk rounds (wrk -t1 -c50 inside zone z1, medians over rounds):
  direct      wrk -> nginx (z1)
  in-zone     wrk -> client sidecar (z1) --mTLS--> server sidecar (z1) -> nginx         the baseline
  cross-zone  wrk -> client sidecar (z1) --mTLS via z2's zone ingress--> server sidecar (z2) -> nginx
Targets: cross-zone >= 0.8 x in-zone req/s; it adds at most one Envoy hop's latency (estimated as half of what
the in-zone path's two Envoys add over direct).

Control plane: a MeshTimeout changed on the global N times; for each change, the seconds until a data plane in
each of the three zones has ACKed new configuration (its zone control plane's insight, ``lastAck``, polled every
20 ms from inside the zone). Target: p99 < 2 s.

    sudo python -m bench.multizone [--rounds 5] [--duration 10] [--changes 30]

Needs root (namespaces), nginx and wrk.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.controlplane.__main__ import free_port
from bench.multizone.report import data_path_table, medians, parse_wrk, propagation_table
from isthmus.demo.netns import Network, can_create
from isthmus.demo.zones import GlobalPorts, Zones, request, wait_until

ZONES = ("z1", "z2", "z3")
NGINX_PORT, INBOUND, CLIENT_INBOUND = 8080, 28080, 28081
OUT_LOCAL, OUT_REMOTE = 15001, 15002
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
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello from nginx\\n"; }}
  }}
}}
"""
# DP name per zone whose ACK is watched
WATCHED = {"z1": "client-1", "z2": "echo-remote-1", "z3": "idle-1"}


def sidecar(name: str, service: str, address: str, inbound: int, app: int, outbound: str = "") -> str:
    return (
        f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n"
        f"  - port: {inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: {service}\n"
        f"      kuma.io/protocol: http\n{outbound}"
    )


def timeout_policy(seconds: int) -> str:
    return f"""type: MeshTimeout
mesh: default
name: a-bench-propagation
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default:
      http: {{requestTimeout: {seconds}s}}
"""


def start(world: Zones, tmp: Path) -> None:
    world.start_global()
    world.apply_global(MESH)
    net = world.network.zones
    for zone in ZONES:
        world.start_zone_cp(zone)
        wait_until(lambda z=zone: world.zone_has(z, "/meshes/default"), 60, f"the mesh in {zone}")  # type: ignore[misc]
        world.start_ingress(zone, 9901)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for zone in ("z1", "z2"):
        conf_dir = tmp / f"nginx-{zone}"
        conf_dir.mkdir()
        (conf_dir / "nginx.conf").write_text(NGINX_CONF.format(dir=conf_dir, port=NGINX_PORT))
        world.spawn(f"nginx-{zone}", net[zone].command(nginx, "-c", str(conf_dir / "nginx.conf"), "-e", str(conf_dir / "err.log")))  # fmt: skip
    outbound = (
        f"  outbound:\n  - port: {OUT_LOCAL}\n    tags:\n      kuma.io/service: echo-local\n"
        f"  - port: {OUT_REMOTE}\n    tags:\n      kuma.io/service: echo-remote\n"
    )
    world.start_sidecar(
        "z1", sidecar("echo-local-1", "echo-local", net["z1"].address, INBOUND, NGINX_PORT), 9902
    )
    world.start_sidecar("z2", sidecar("echo-remote-1", "echo-remote", net["z2"].address, INBOUND, NGINX_PORT), 9902)  # fmt: skip
    world.start_sidecar("z3", sidecar("idle-1", "idle", net["z3"].address, INBOUND, NGINX_PORT), 9902)
    world.start_sidecar(
        "z1", sidecar("client-1", "client", net["z1"].address, CLIENT_INBOUND, 1, outbound), 9903
    )
    for port in (OUT_LOCAL, OUT_REMOTE):
        wait_until(
            lambda p=port: world.zone("z1").run(request, "GET", f"http://127.0.0.1:{p}/").status_code == 200,  # type: ignore[misc]
            120,
            f"z1's client sidecar -> :{port}",
        )


def wrk(world: Zones, url: str, duration: int) -> dict[str, float]:
    command = world.zone("z1").command("wrk", "-t1", "-c50", f"-d{duration}s", "--latency", url)
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60)
    return parse_wrk(done.stdout)


def last_ack(world: Zones, zone: str) -> dict[str, Any]:
    resp = world.zone_call(zone, "GET", f"/meshes/default/dataplanes+insights/{WATCHED[zone]}")
    resp.raise_for_status()
    return resp.json()["dataplaneInsight"].get("lastAck") or {}  # type: ignore[no-any-return]


def _wait_changed(api: str, before: dict[str, Any], since: float, timeout: float) -> float:
    """On the zone's thread: poll the insight until ``lastAck`` differs from ``before``; seconds since ``since``."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        resp = request("GET", api, timeout=5)
        if resp.status_code == 200 and (resp.json()["dataplaneInsight"].get("lastAck") or {}) != before:
            return time.monotonic() - since
        time.sleep(0.02)
    raise RuntimeError(f"{api}: no new ACK within {timeout:.0f}s")


def propagation(world: Zones, changes: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {z: [] for z in ZONES}
    for i in range(changes):
        before = {z: last_ack(world, z) for z in ZONES}
        since = time.monotonic()
        world.apply_global(timeout_policy(30 + i))
        futures = {
            z: world.zone(z).submit(
                _wait_changed,
                f"http://127.0.0.1:{world.zports.api}/meshes/default/dataplanes+insights/{WATCHED[z]}",
                before[z],
                since,
                30.0,
            )
            for z in ZONES
        }
        for z, future in futures.items():
            samples[z].append(future.result())
        time.sleep(0.5)  # let every proxy settle before the next change
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--changes", type=int, default=30, help="policy changes timed")
    parser.add_argument("--subnet", default="10.215.0", help="first three octets of the private /24 used")
    args = parser.parse_args()
    if not can_create():
        sys.exit("bench.multizone creates network namespaces: run it as root (with iproute2's ip)")
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is required: apt-get install -y nginx wrk")
    with tempfile.TemporaryDirectory(prefix="bench-multizone-") as tmp_name:
        tmp = Path(tmp_name)
        network = Network("imzb", args.subnet, ZONES)
        ports = GlobalPorts(api=free_port(), api_tls=free_port(), xds=free_port(), kds=free_port())
        world = Zones(tmp, network, global_ports=ports)
        try:
            network.create()
            print("starting a global control plane and 3 zones ...", file=sys.stderr)
            start(world, tmp)
            paths = {
                "direct (nginx, z1)": f"http://127.0.0.1:{NGINX_PORT}/",
                "in-zone (sidecar -> sidecar)": f"http://127.0.0.1:{OUT_LOCAL}/",
                "cross-zone (via z2's ingress)": f"http://127.0.0.1:{OUT_REMOTE}/",
            }
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for r in range(args.rounds):
                for name, url in paths.items():
                    rounds[name].append(wrk(world, url, args.duration))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
            samples = propagation(world, args.changes)
        finally:
            world.stop()
            network.delete()
    med = medians(rounds)
    print(
        f"\nMulti-zone data path: wrk -t1 -c50 in zone z1, {args.rounds} rounds x {args.duration}s, medians"
    )
    direct, in_zone, cross = paths
    print("\n".join(data_path_table(med, in_zone, cross, direct)))
    print(f"\nPolicy applied on the global -> a data plane's ACK, one per zone ({args.changes} changes)")
    print("\n".join(propagation_table(samples)))


if __name__ == "__main__":
    main()
