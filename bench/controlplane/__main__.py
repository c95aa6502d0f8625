"""Control-plane benchmark: propagation time of a policy change to N data planes, and memory per data plane.

Starts a real control plane (`isthmus cp run --store memory`) and a separate process of N simulated Envoys
(`ads_clients.py`, real gRPC ADS streams). Registers N Dataplanes over REST (100 services, each data plane with
one inbound and two outbounds) in an mTLS mesh, waits until every client has ACKed its config, then applies a
MeshTrafficPermission that changes every inbound and measures, per client, the time from the start of the
`apply` to its ACK of the new listeners. Runs several rounds and reports the median round.

    python -m bench.controlplane [--sizes 100,1000] [--rounds 3]

Baseline in the same run: the smallest size; the ratio column compares each size's p99 with it.
Target (issue #2, 2 cores): N = 1000 with p99 propagation under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mesh_doc() -> dict:
    return {
        "type": "Mesh",
        "name": "bench",
        "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]},
    }


def dataplane(i: int, services: int) -> tuple[dict, list[str]]:
    svc = f"svc-{i % services}"
    outs = [(10001, f"svc-{(i + 1) % services}"), (10002, f"svc-{(i + 2) % services}")]
    doc = {
        "type": "Dataplane",
        "mesh": "bench",
        "name": f"dp-{i}",
        "networking": {
            "address": f"10.{i // 62500}.{(i // 250) % 250}.{i % 250 + 1}",
            "inbound": [
                {
                    "port": 8080,
                    "servicePort": 18080,
                    "tags": {"kuma.io/service": svc, "kuma.io/protocol": "http"},
                }
            ],
            "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for p, s in outs],
        },
    }
    return doc, [f"outbound:127.0.0.1:{p}" for p, _ in outs]


def policy(round_no: int) -> dict:
    return {
        "type": "MeshTrafficPermission",
        "mesh": "bench",
        "name": "bench-policy",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
                {
                    "targetRef": {"kind": "MeshSubset", "tags": {"round": str(round_no)}},
                    "default": {"action": "Deny"},
                },
            ],
        },
    }


def read_event(proc: subprocess.Popen, want: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("simulator exited")
        ev = json.loads(line)
        if ev.get("event") == want:
            return ev
    raise TimeoutError(want)


def run_size(n: int, rounds: int) -> dict:
    api, xds = free_port(), free_port()
    cp = subprocess.Popen(
        [sys.executable, "-m", "isthmus.cli", "cp", "run", "--store", "memory", "--api-address", f"127.0.0.1:{api}",
         "--xds-address", f"127.0.0.1:{xds}", "--log-level", "warning"],
    )  # fmt: skip
    http = httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30)
    sim = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.get("/")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rss_idle = rss_mb(cp.pid)
        http.put("/meshes/bench", json=mesh_doc()).raise_for_status()
        http.put("/meshes/bench/meshtrafficpermissions/bench-policy", json=policy(0)).raise_for_status()
        services = max(1, n // 10)
        plan = []
        t_reg = time.monotonic()
        for i in range(n):
            doc, rds = dataplane(i, services)
            http.put(f"/meshes/bench/dataplanes/dp-{i}", json=doc).raise_for_status()
            plan.append([f"bench.dp-{i}", "bench", rds])
        reg_seconds = time.monotonic() - t_reg
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(plan, f)
        sim = subprocess.Popen(
            [sys.executable, str(HERE / "ads_clients.py"), "--xds", f"127.0.0.1:{xds}", "--plan", f.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        t_sync = time.monotonic()
        read_event(sim, "synced", 300)
        sync_seconds = time.monotonic() - t_sync
        time.sleep(1.0)
        rss_synced = rss_mb(cp.pid)
        results = []
        for r in range(1, rounds + 1):
            assert sim.stdin is not None
            sim.stdin.write("mark\n")
            sim.stdin.flush()
            read_event(sim, "marked", 10)
            t0 = time.time()
            http.put("/meshes/bench/meshtrafficpermissions/bench-policy", json=policy(r)).raise_for_status()
            ev = read_event(sim, "updated", 120)
            lat = sorted(t - t0 for t in ev["times"])
            results.append(
                {
                    "p50": lat[len(lat) // 2],
                    "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                    "max": lat[-1],
                }
            )
            time.sleep(0.5)
        med = sorted(results, key=lambda x: x["p99"])[len(results) // 2]
        return {
            "n": n,
            "register_s": reg_seconds,
            "initial_sync_s": sync_seconds,
            "p50": med["p50"],
            "p99": med["p99"],
            "max": med["max"],
            "rss_mb": rss_synced,
            "kb_per_dp": (rss_synced - rss_idle) * 1024 / n,
        }
    finally:
        if sim is not None:
            sim.kill()
        cp.terminate()
        cp.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [run_size(n, args.rounds) for n in sizes]
    base = rows[0]["p99"] or 1e-9
    print(
        f"\nControl plane: policy apply -> every client ACKed (median of {args.rounds} rounds), {os.cpu_count()} cores"
    )
    print(f"{'N':>6} {'register s':>11} {'first sync s':>13} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'p99 vs N=' + str(rows[0]['n']):>12} {'CP RSS MB':>10} {'KB / DP':>8} {'target':>14}")  # fmt: skip
    for r in rows:
        target = "p99 < 1000 ms" if r["n"] >= 1000 else ""
        verdict = ("met" if r["p99"] < 1.0 else "MISSED") if target else ""
        print(
            f"{r['n']:>6} {r['register_s']:>11.2f} {r['initial_sync_s']:>13.2f} {r['p50'] * 1000:>8.0f} "
            f"{r['p99'] * 1000:>8.0f} {r['max'] * 1000:>8.0f} {r['p99'] / base:>12.2f} {r['rss_mb']:>10.0f} "
            f"{r['kb_per_dp']:>8.0f} {(target + ' ' + verdict).strip():>14}"
        )


if __name__ == "__main__":
    main()
