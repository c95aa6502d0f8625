"""Control-plane benchmark: registration, restart and policy-change propagation with N data planes.

Starts a real control plane (`isthmus cp run` with its defaults: SQLite store, TLS on xDS, data-plane tokens
required; data directory in a temporary directory) and a separate process of N simulated Envoys (`ads_clients.py`, real gRPC ADS streams) in an mTLS mesh (100 services at N = 1000, each
data plane with one inbound and two outbounds). Measures:

* register s: N Dataplanes are PUT over REST, each with its data-plane token (``--concurrency`` in flight, as
  a fleet of agents starting together), then every simulated Envoy connects -> every client has ACKed CDS,
  EDS, LDS and SDS ("PUTs s": the PUTs alone);
* policy p50/p99: a MeshTrafficPermission that changes every inbound is applied -> each client's ACK of its
  new listeners (several rounds, the median round reported);
* restart s: the control plane is stopped and a new one started on the same data directory and ports; every
  client reconnects and asks for everything again (with ``--restart-reregister`` every agent also PUTs its
  unchanged Dataplane again, which agents do not do) -> every client has ACKed every type on its new stream
  (from the new process's start; "API up s" is when its REST API answered, i.e. after its first full
  generation).

    python -m bench.controlplane [--sizes 100,1000] [--rounds 3] [--concurrency 16]

Baseline in the same run: the smallest size; the ratio column compares each size's p99 with it.
Targets (issue #6, 2 cores): N = 1000 with p99 propagation under 1 s, and every data plane configured within
5 s of a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


_EVENTS: dict[int, queue.Queue[str]] = {}


def read_event(proc: subprocess.Popen, want: str, timeout: float) -> dict:
    """The next event ``want`` of the simulator; TimeoutError after ``timeout`` even if it prints nothing."""
    assert proc.stdout is not None
    lines = _EVENTS.get(proc.pid)
    if lines is None:
        lines = _EVENTS[proc.pid] = queue.Queue()
        stdout = proc.stdout

        def pump(out: queue.Queue[str] = lines) -> None:
            for text in stdout:
                out.put(text)
            out.put("")

        threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            raise RuntimeError("simulator exited")
        ev: dict = json.loads(line)
        if ev.get("event") == want:
            return ev
    raise TimeoutError(f"no {want!r} from the simulator within {timeout}s (see the control plane's log)")


def start_cp(
    api: int, xds: int, data_dir: Path, plain: bool, dp_auth: str = "token", src: str = ""
) -> subprocess.Popen:
    """``isthmus cp run`` with its defaults: SQLite store, TLS on xDS, data-plane tokens required (``plain``:
    the options of a control plane from before TLS and tokens, to measure an older version the same way;
    ``src``: the ``src`` directory of another checkout to run instead of this one, e.g. a baseline commit)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    secure = [] if plain else ["--api-tls-address", f"127.0.0.1:{free_port()}", "--dp-auth", dp_auth,
                               "--gateway-admin-address", "off"]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "isthmus.cli", "cp", "run", "--data-dir", str(data_dir),
         "--store", f"sqlite:{data_dir / 'isthmus.db'}", "--api-address", f"127.0.0.1:{api}", *secure,
         "--xds-address", f"127.0.0.1:{xds}", "--log-level", os.environ.get("BENCH_CP_LOG_LEVEL", "warning")],
        env=env,
    )  # fmt: skip


def wait_api(http: httpx.Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            http.get("/")
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def register_all(api: int, docs: list[dict], tokens: list[str], concurrency: int) -> None:
    """PUT every Dataplane with its data-plane token, ``concurrency`` at a time (as a fleet of agents starting
    together would)."""
    local = threading.local()

    def put(item: tuple[dict, str]) -> None:
        doc, token = item
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=60)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client.put(f"/meshes/bench/dataplanes/{doc['name']}", json=doc, headers=headers).raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, zip(docs, tokens, strict=True)))


def dataplane_tokens(api: int, names: list[str], concurrency: int) -> list[str]:
    local = threading.local()

    def issue(name: str) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=60)
        resp = client.post("/tokens/dataplane", json={"mesh": "bench", "name": name})
        resp.raise_for_status()
        return resp.text.strip()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(issue, names))


def run_size(
    n: int,
    rounds: int,
    concurrency: int,
    reregister: bool,
    plain: bool,
    dp_auth: str,
    profile: str = "",
    restarts_n: int = 1,
    baseline_src: str = "",
    cp_src: str = "",
) -> dict:
    api, xds = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory()
    data_dir = Path(tmp.name) / "cp"
    cp = start_cp(api, xds, data_dir, plain, dp_auth, cp_src)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30)
    sim = None
    try:
        wait_api(http, 30)
        rss_idle = rss_mb(cp.pid)
        http.put("/meshes/bench", json=mesh_doc()).raise_for_status()
        http.put("/meshes/bench/meshtrafficpermissions/bench-policy", json=policy(0)).raise_for_status()
        services = max(1, n // 10)
        docs = [dataplane(i, services)[0] for i in range(n)]
        tokens = (
            [""] * n
            if plain or dp_auth == "none"
            else dataplane_tokens(api, [d["name"] for d in docs], concurrency)
        )
        plan = [[f"bench.dp-{i}", "bench", dataplane(i, services)[1], tokens[i]] for i in range(n)]
        with open(Path(tmp.name) / "plan.json", "w") as f:
            json.dump(plan, f)
        # as agents do: register the Dataplane, then start Envoy (the simulator is started beforehand, idle)
        sim = subprocess.Popen(
            [sys.executable, str(HERE / "ads_clients.py"), "--xds", f"127.0.0.1:{xds}", "--plan", f.name,
             *([] if plain else ["--ca-file", str(data_dir / "tls" / "ca.crt")])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0 + n / 1000)
        progress(f"N={n}: registering (control plane pid {cp.pid})")
        t_reg = time.monotonic()
        register_all(api, docs, tokens, concurrency)
        put_seconds = time.monotonic() - t_reg
        assert sim.stdin is not None
        sim.stdin.write("go\n")
        sim.stdin.flush()
        progress(f"N={n}: PUTs done, waiting for every client's config")
        read_event(sim, "synced", 600)
        reg_seconds = time.monotonic() - t_reg
        progress(f"N={n}: registered and synced in {reg_seconds:.2f}s; policy rounds")
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
        # restart: a new control plane on the same store and ports; every client reconnects and asks for
        # everything again. With a baseline, restarts alternate between the baseline's control plane and this
        # tree's, on the same store and clients; each one's median is reported.
        restarts: dict[str, list[tuple[float, float]]] = {}
        variants = ([("baseline", baseline_src)] if baseline_src else []) + [("this tree", cp_src)]
        for k in range(restarts_n):
            for label, src in variants:
                assert sim.stdin is not None
                sim.stdin.write("restart\n")
                sim.stdin.flush()
                read_event(sim, "restart-marked", 10)
                cp.terminate()
                cp.wait(30)
                time.sleep(0.5)
                t_restart = time.time()
                cp = start_cp(api, xds, data_dir, plain, dp_auth, src)
                progress(f"N={n}: restarted {label} (control plane pid {cp.pid})")
                spy = None
                if profile and k == 0:  # py-spy on the new control plane until every client is configured
                    out = profile.replace("{variant}", label.replace(" ", "-"))
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--nonblocking",
                         "-r", "200", "-f", "speedscope" if out.endswith(".json") else "flamegraph", "-o", out,
                         "--pid", str(cp.pid)],
                        stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                wait_api(http, 120)
                api_seconds = time.time() - t_restart
                if reregister:
                    register_all(api, docs, tokens, concurrency)
                ev = read_event(sim, "resynced", 600)
                restarts.setdefault(label, []).append((ev["time"] - t_restart, api_seconds))
                progress(
                    f"N={n}: {label}: every client configured {ev['time'] - t_restart:.2f}s after the start"
                )
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes its profile
                    spy.wait(60)
        medians = {label: sorted(times)[len(times) // 2] for label, times in restarts.items()}
        restart_seconds, api_seconds = medians["this tree"]
        return {
            "n": n,
            "put_s": put_seconds,
            "register_s": reg_seconds,
            "restart_api_s": api_seconds,
            "restart_s": restart_seconds,
            "p50": med["p50"],
            "p99": med["p99"],
            "max": med["max"],
            "rss_mb": rss_synced,
            "kb_per_dp": (rss_synced - rss_idle) * 1024 / n,
            "baseline_restart": medians.get("baseline"),
        }
    finally:
        if sim is not None:
            sim.kill()
        cp.terminate()
        cp.wait(20)
        tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16, help="Dataplane registrations in flight")
    ap.add_argument(
        "--restart-reregister",
        action="store_true",
        help="after the restart, every agent also PUTs its unchanged Dataplane again (agents do not: worst case)",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="no TLS and no data-plane tokens: for control planes from before them (a baseline of an older version)",
    )
    ap.add_argument("--dp-auth", default="token", help="token (the default) | none: passed to isthmus cp run")
    ap.add_argument(
        "--profile-restart",
        default="",
        metavar="FILE",
        help="record the restarted control plane with py-spy (--gil) into FILE (.svg or .json: speedscope)",
    )
    ap.add_argument("--restarts", type=int, default=1, help="restarts per size (the median is reported)")
    ap.add_argument(
        "--baseline-src",
        default="",
        metavar="DIR",
        help="the src directory of a baseline checkout (e.g. `git worktree add /tmp/base <commit>`): restarts "
        "alternate between its control plane and this tree's, on the same store and clients",
    )
    ap.add_argument(
        "--cp-src",
        default="",
        metavar="DIR",
        help="run the control plane of another checkout's src directory instead of this tree's (every phase; "
        "'this tree' in the output then means it)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [
        run_size(
            n,
            args.rounds,
            args.concurrency,
            args.restart_reregister,
            args.plain,
            args.dp_auth,
            args.profile_restart.replace("{n}", str(n)),
            args.restarts,
            args.baseline_src,
            args.cp_src,
        )
        for n in sizes
    ]
    base = rows[0]["p99"] or 1e-9
    print(
        f"\nControl plane: policy apply -> every client ACKed (median of {args.rounds} rounds), {os.cpu_count()} cores"
    )
    print(f"{'N':>6} {'PUTs s':>7} {'register s':>11} {'restart s':>10} {'(API up s)':>10} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'p99 vs N=' + str(rows[0]['n']):>12} {'CP RSS MB':>10} {'KB / DP':>8} "
          f"{'target':>28}")  # fmt: skip
    for r in rows:
        verdict = ""
        if r["n"] >= 1000:
            ok = r["p99"] < 1.0 and r["restart_s"] < 5.0
            verdict = "p99 < 1 s, restart < 5 s: " + ("met" if ok else "MISSED")
        print(
            f"{r['n']:>6} {r['put_s']:>7.2f} {r['register_s']:>11.2f} {r['restart_s']:>10.2f} "
            f"{r['restart_api_s']:>10.2f} {r['p50'] * 1000:>8.0f} {r['p99'] * 1000:>8.0f} {r['max'] * 1000:>8.0f} "
            f"{r['p99'] / base:>12.2f} {r['rss_mb']:>10.0f} {r['kb_per_dp']:>8.0f} {verdict:>28}"
        )
    for r in rows:
        if r["baseline_restart"] is not None:
            b_restart, b_api = r["baseline_restart"]
            print(
                f"N={r['n']} restart (median of {args.restarts}, alternating): baseline {b_restart:.2f}s "
                f"(API up {b_api:.2f}s), this tree {r['restart_s']:.2f}s (API up {r['restart_api_s']:.2f}s), "
                f"ratio {r['restart_s'] / b_restart:.2f}"
            )


if __name__ == "__main__":
    main()
