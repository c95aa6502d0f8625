"""Gateway benchmark (issue #8): throughput through gateway Envoys configured by a real control plane from Kong's
configuration, against nginx as a reverse proxy and against the gateway itself, and configuration timings at
10,000 routes. Everything in one run, paths measured in interleaved rounds (rotated), medians.

    wrk --> nginx reverse proxy ---------------------------\\
    wrk --> gateway Envoy (workspace default: 2 routes) -----> nginx upstream (fixed body)
    wrk --> gateway Envoy (workspace big: 10,000 routes,---/
                           10,000 consumers with key-auth credentials)

Paths (wrk -t1 -c50; the gateway Envoys and both nginx have one worker each):
  upstream direct        nginx returning a fixed body (to show it is not the bottleneck)
  nginx reverse proxy    nginx proxying to that upstream over kept-alive connections
  gateway, plain route   a Kong route with no plugin
  gateway, key-auth + rate-limiting   a route with key-auth (an apikey header) and rate-limiting (policy local,
                         a limit never reached), i.e. the configuration Kong's own benchmark reports 0.74-0.76 for
  10k routes, ...        the same two routes in a workspace of 10,000 routes and 10,000 consumers; their paths are
                         the shortest, so Kong's router order (and Envoy's route list) tries them last

Timings: `isthmus gateway apply` of the 10,000-route file (and until the gateway serves it); a change of one
route's paths among 10,000 through the Admin API, from the PATCH returning to the first request the gateway
answers on the new path (p50/max over --changes changes).

    python -m bench.gateway [--rounds 5] [--duration 5] [--routes 10000] [--consumers 10000] [--changes 8]

Needs nginx and wrk. Targets: key-auth + rate-limiting >= 0.90 x the plain route; plain >= 0.7 x nginx;
10k routes >= 0.95 x the small workspace; a change served < 2 s; apply < 30 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, ControlPlane, Proc, wait_for

from bench.gateway.workload import (
    API_KEY,
    PROXY_CONF,
    UPSTREAM_CONF,
    big_config,
    dump,
    extra_ratio_lines,
    medians,
    minimal_envoy,
    parse_wrk,
    requests_done,
    small_config,
    throughput_table,
    timing_lines,
    tree_cpu_seconds,
)
from isthmus.dp.envoy_binary import find_envoy_binary

MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""


class GatewayProxy:
    """``isthmus dp run --proxy-type gateway`` for ``workspace`` on a free loopback port."""

    def __init__(self, tmp: Path, cp: ControlPlane, name: str, workspace: str) -> None:
        self.port = free_port()
        dataplane = tmp / f"gw-{name}.yaml"
        dataplane.write_text(
            f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n"
            f"  gateway:\n    type: DELEGATED\n    tags:\n      kuma.io/service: edge-{name}\n  outbound: []\n"
        )
        token = tmp / f"token-{name}"
        token.write_text(cp.dataplane_token("default", name))
        args = [*ISTHMUS, "dp", "run", "--proxy-type", "gateway", "--cp-address", cp.https_url,
                "--ca-cert-file", str(cp.ca_file), "--dataplane-token-file", str(token),
                "--dataplane-file", str(dataplane), "--proxy-listen", f"127.0.0.1:{self.port}",
                "--workspace", workspace, "--admin-port", str(free_port()), "--work-dir", str(tmp / f"work-{name}"),
                "--log-level", "warning"]  # fmt: skip
        self.proc = Proc(f"gw-{name}", args, tmp)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProxy:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.proc.stop()

    def pid(self) -> int:
        """The agent's pid (its tree: the agent, its Envoy and its rate-limit service)."""
        assert self.proc.proc is not None
        return self.proc.proc.pid


def wrk(url: str, duration: int, headers: dict[str, str], pid: int | None = None) -> dict[str, float]:
    """One wrk run; with ``pid``, also the CPU microseconds per request that process tree used (the proxy's cost,
    which the machine's other load changes much less than req/s)."""
    args = ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    before = tree_cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    result = parse_wrk(out)
    if pid is not None:
        result["cpu_us"] = (tree_cpu_seconds(pid) - before) * 1e6 / max(1, requests_done(out))
    return result


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def post_config(kong: httpx.Client, workspace: str, doc: dict[str, object]) -> None:
    path = "/config" if workspace == "default" else f"/{workspace}/config"
    response = kong.post(path, content=json.dumps(doc), headers={"content-type": "application/json"})
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")


def timed_apply(cp: ControlPlane, file: Path, workspace: str) -> float:
    start = time.monotonic()
    done = subprocess.run([*ISTHMUS, "gateway", "apply", "-f", str(file), "--workspace", workspace,
                    "--gateway-admin-address", f"http://127.0.0.1:{cp.gateway_admin_port}"],
                   capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"gateway apply failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    return time.monotonic() - start


def served_after(url: str, expect: int, timeout: float, headers: dict[str, str] | None = None) -> float:
    """Seconds until ``url`` answers ``expect`` (polled on one kept-alive connection)."""
    start = time.monotonic()
    with httpx.Client(timeout=2, headers=headers) as client:
        while time.monotonic() - start < timeout:
            try:
                if client.get(url).status_code == expect:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.002)
    raise RuntimeError(f"{url} did not answer {expect} within {timeout}s")


def route_changes(kong: httpx.Client, gateway: str, workspace: str, routes: int, count: int) -> list[float]:
    """Change the paths of ``count`` routes spread over the workspace, one at a time; the seconds from each PATCH
    returning to the first request answered on the new path."""
    out = []
    per = max(1, (routes // 100) // max(count, 1))
    for k in range(count):
        service = (k * per) % max(1, routes // 100)
        name = f"svc-{service:05d}-r{k % 100:03d}"
        path = f"/c{k:05d}/x{service % 1000:03d}"  # the length of the others: the order stays the same
        response = kong.patch(f"/{workspace}/routes/{name}", json={"paths": [path]})
        if response.status_code != 200:
            raise RuntimeError(f"PATCH route {name}: {response.status_code} {response.text[:300]}")
        out.append(served_after(gateway + path, 200, 60))
        time.sleep(0.5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--consumers", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=8)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the nginx proxy and threads of the minimal Envoy (the gateway Envoys: see dp run)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is required: apt-get install -y nginx-light wrk")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[subprocess.Popen[bytes]] = []
    stoppable: list[GatewayProxy | ControlPlane] = []
    try:
        upstream_port, proxy_port = free_port(), free_port()
        (tmp / "upstream.conf").write_text(UPSTREAM_CONF.format(dir=tmp, port=upstream_port))
        proxy_conf = PROXY_CONF.format(dir=tmp, port=proxy_port, upstream=upstream_port, workers=args.workers)
        (tmp / "proxy.conf").write_text(proxy_conf)
        for conf in ("upstream.conf", "proxy.conf"):
            procs.append(subprocess.Popen([nginx_bin, "-c", str(tmp / conf), "-e", str(tmp / f"{conf}.log")]))
        minimal_port = free_port()
        (tmp / "minimal.json").write_text(json.dumps(minimal_envoy(minimal_port, upstream_port, free_port())))
        with (tmp / "minimal.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        str(find_envoy_binary()),
                        "-c",
                        str(tmp / "minimal.json"),
                        "--concurrency",
                        str(args.workers),
                        "--disable-hot-restart",
                        "--log-level",
                        "warning",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        minimal = f"http://127.0.0.1:{minimal_port}"
        wait_for(lambda: status(minimal + "/") == 200, 20, what="the minimal Envoy")
        upstream = f"http://127.0.0.1:{upstream_port}"
        wait_for(lambda: status(upstream + "/") == 200, 20, what="nginx upstream")
        wait_for(lambda: status(f"http://127.0.0.1:{proxy_port}/") == 200, 20, what="nginx proxy")

        cp = ControlPlane(tmp).start()
        stoppable.append(cp)
        cp.apply(MESH)
        kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=120)
        plugins = kong.get("/").json()["plugins"]["available_on_server"]
        key_auth = "key-auth" in plugins
        auth_headers = {"apikey": API_KEY} if key_auth else {}
        post_config(kong, "default", small_config(upstream, key_auth))

        small = GatewayProxy(tmp, cp, "gw-small", "default").start()
        big = GatewayProxy(tmp, cp, "gw-big", "big").start()
        stoppable += [small, big]
        wait_for(lambda: status(small.url + "/bench") == 200, 60, what="the small gateway")
        wait_for(lambda: status(big.url + "/bench") == 404, 60, what="the big gateway (empty workspace)")

        doc = big_config(args.routes, args.consumers, per_service=100, upstream=upstream, key_auth=key_auth)
        (tmp / "big.yaml").write_text(dump(doc))
        print(f"applying {args.routes} routes and {args.consumers} consumers ...", file=sys.stderr)
        apply_s = timed_apply(cp, tmp / "big.yaml", "big")
        served_s = served_after(big.url + "/bench", 200, 300)
        print(f"applied in {apply_s:.2f}s, served {served_s:.2f}s later", file=sys.stderr)
        change_s = route_changes(kong, big.url, "big", args.routes, args.changes)
        print("changes: " + ", ".join(f"{s:.3f}" for s in change_s), file=sys.stderr)

        big_key = {"apikey": f"bench-key-{args.consumers // 2}"} if key_auth else {}
        auth_row = "key-auth + rate-limiting" if key_auth else "rate-limiting (no key-auth yet)"
        pids = {"upstream": procs[0].pid, "proxy": procs[1].pid, "minimal": procs[2].pid}
        small_pid, big_pid = small.pid(), big.pid()
        paths: dict[str, tuple[str, dict[str, str], int]] = {
            "upstream direct (nginx)": (upstream + "/", {}, pids["upstream"]),
            "nginx reverse proxy": (f"http://127.0.0.1:{proxy_port}/bench", {}, pids["proxy"]),
            "minimal Envoy (router only)": (minimal + "/bench", {}, pids["minimal"]),
            "gateway, plain route": (small.url + "/bench", {}, small_pid),
            f"gateway, {auth_row}": (small.url + "/bauth", auth_headers, small_pid),
            "10k routes, plain route": (big.url + "/bench", {}, big_pid),
            f"10k routes + 10k consumers, {auth_row}": (big.url + "/bauth", big_key, big_pid),
        }
        for name, (url, headers, _) in paths.items():
            code = status(url, headers)
            if code != 200:
                raise RuntimeError(f"{name}: {url} answered {code}")
            wrk(url, 2, headers)  # warm-up
        results: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
        names = list(paths)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated: no path always first
                url, headers, pid = paths[name]
                results[name].append(wrk(url, args.duration, headers, pid))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for item in reversed(stoppable):
            item.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = {name: medians(rounds) for name, rounds in results.items()}
    print(
        f"\nGateway: wrk -t1 -c50, {args.rounds} rounds x {args.duration}s, medians; workers: nginx proxy "
        f"{args.workers}, minimal Envoy {args.workers}, gateway Envoys 1, nginx upstream 1; "
        f"{args.routes} routes / {args.consumers} consumers"
    )
    for line in throughput_table(med):
        print(line)
    for line in extra_ratio_lines(med):
        print(line)
    print()
    for line in timing_lines([apply_s], [served_s], change_s):
        print(line)


if __name__ == "__main__":
    main()
