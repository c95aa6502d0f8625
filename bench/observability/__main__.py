"""Observability benchmark (issue #10): what MeshMetric, MeshAccessLog and MeshTrace cost the mesh path.

    wrk -> [client sidecar] --mTLS, HTTP/2--> [server sidecar] --HTTP/1.1--> nginx

Two such pairs in one mesh, one control plane, measured in interleaved rounds (wrk -t1 -c50, medians):
  bare mesh path   client-bare -> server-bare: only a MeshTrafficPermission
  observed         client-obs -> server-obs (tag ``bench: observed``): a MeshAccessLog File backend on every
                   inbound and outbound (Kuma's default HTTP format), a MeshTrace backend sampling 10% of the
                   requests (Zipkin with ``apiVersion: httpProto`` unless ``--tracer`` says otherwise), and a
                   MeshMetric Prometheus backend on each agent, scraped every 5 s while the observed path is
                   measured
The trace backend is a receiver in its own process (:mod:`bench.observability.receiver`) that decodes and
counts the spans; its CPU time per request is reported apart (on this 2-core machine it competes with the
measured path, as a collector on another host would not). Target (issue #10): observed >= 0.90 x the bare
path's req/s.

    python -m bench.observability [--rounds 8 --duration 5]

Needs nginx and wrk (Debian packages).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import yaml

from bench.controlplane.__main__ import free_port
from bench.dataplane.__main__ import wait_http
from bench.observability.receiver import read_counts
from bench.observability.report import BARE, OBSERVED, medians, parse_wrk, table
from isthmus.catalog import default_registry

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

SCRAPE_SECONDS = 5.0
KINDS = frozenset({"log", "trace", "metric"})
TRACERS = ("zipkin-json", "zipkin-proto", "otel")
DEFAULT_TRACER = "zipkin-proto"  # Kuma documents httpProto; Envoy encodes it ~3x cheaper than JSON


def dataplane(name: str, service: str, inbound: int, app: int, outbound: int = 0, target: str = "") -> str:
    tags = {"kuma.io/service": service, "kuma.io/protocol": "http"}
    if name.endswith("-obs"):
        tags["bench"] = "observed"
    doc = {
        "type": "Dataplane",
        "mesh": "bench",
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": inbound, "servicePort": app, "tags": tags}],
            "outbound": [{"port": outbound, "tags": {"kuma.io/service": target}}] if outbound else [],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def trace_backend(tracer: str, port: int) -> dict[str, object]:
    """The MeshTrace backend of ``tracer`` (one of :data:`TRACERS`), reaching the receiver on ``port``."""
    if tracer == "otel":
        return {"type": "OpenTelemetry", "openTelemetry": {"endpoint": f"127.0.0.1:{port}"}}
    api = "httpProto" if tracer == "zipkin-proto" else "httpJson"
    return {"type": "Zipkin", "zipkin": {"url": f"http://127.0.0.1:{port}/api/v2/spans", "apiVersion": api}}


def policies(
    log_file: Path,
    receiver: int,
    metrics_ports: dict[str, int],
    observe: frozenset[str] = KINDS,
    tracer: str = DEFAULT_TRACER,
    overall: int = 10,
) -> list[dict[str, object]]:
    """The mesh's policies: the permission, then those of ``observe`` (a subset of :data:`KINDS`)."""
    observed = {"kind": "MeshSubset", "tags": {"bench": "observed"}}
    file_backend = {"backends": [{"type": "File", "file": {"path": str(log_file)}}]}
    out: list[dict[str, object]] = [
        {
            "type": "MeshTrafficPermission",
            "name": "allow",
            "spec": {
                "targetRef": {"kind": "Mesh"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
            },
        },
        {
            "type": "MeshAccessLog",
            "name": "access-log",
            "spec": {
                "targetRef": observed,
                "to": [{"targetRef": {"kind": "Mesh"}, "default": file_backend}],
                "from": [{"targetRef": {"kind": "Mesh"}, "default": file_backend}],
            },
        },
        {
            "type": "MeshTrace",
            "name": "trace",
            "spec": {
                "targetRef": observed,
                "default": {
                    "backends": [trace_backend(tracer, receiver)],
                    "sampling": {"overall": overall},
                },
            },
        },
    ]
    out = [
        p
        for p in out
        if {"MeshAccessLog": "log", "MeshTrace": "trace"}.get(str(p["type"]), "") in {"", *observe}
    ]
    for name, port in metrics_ports.items() if "metric" in observe else ():  # both agents listen on 127.0.0.1
        out.append(
            {
                "type": "MeshMetric",
                "name": f"metrics-{name}",
                "spec": {
                    "targetRef": {"kind": "Dataplane", "name": name},
                    "default": {"backends": [{"type": "Prometheus", "prometheus": {"port": port}}]},
                },
            }
        )
    return [{**p, "mesh": "bench"} for p in out]


def wrk(url: str, duration: int, envoys: list[int] | None = None) -> dict[str, float]:
    """wrk's figures, and with ``envoys`` the CPU time those processes spent per request, in microseconds
    (``cpu_us``): a figure that other work on the machine disturbs much less than req/s."""
    cmd = ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", url]
    before = cpu_seconds(envoys or [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = parse_wrk(out)
    requests = re.search(r"(\d+) requests in", out)
    result["requests"] = float(requests.group(1)) if requests else 0.0
    if envoys and result["requests"]:
        result["cpu_us"] = (cpu_seconds(envoys) - before) * 1e6 / result["requests"]
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def envoy_children(parents: list[int]) -> list[int]:
    """The Envoy processes the agents ``parents`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(tail.split()[1]) in parents and head.split("(", 1)[1].startswith("envoy"):
            found.append(int(entry.name))
    return found


class Scraper:
    """Scrapes the observed agents' metrics every few seconds while running (as Prometheus would)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.scrapes = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                for url in self.urls:
                    try:
                        resp = client.get(url)
                    except httpx.HTTPError:
                        continue
                    if resp.status_code == 200:
                        self.scrapes += 1
                        self.samples = sum(1 for line in resp.text.splitlines() if line and line[0] != "#")
                self.stop.wait(SCRAPE_SECONDS)

    def __enter__(self) -> Scraper:
        self.stop.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def run(
    rounds: int,
    duration: int,
    observe: frozenset[str] = KINDS,
    tracer: str = DEFAULT_TRACER,
    overall: int = 10,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[dict[str, float]]] = {BARE: [], OBSERVED: []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            nginx_port, receiver_port = free_port(), free_port()
            conf = NGINX_CONF.format(dir=tmp, port=nginx_port)
            (tmp / "nginx.conf").write_text(conf)
            procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "e.log")]))
            wait_http(f"http://127.0.0.1:{nginx_port}/")
            counts = tmp / "spans.count"
            kind = "otel" if tracer == "otel" else "zipkin"
            receiver = subprocess.Popen([sys.executable, "-m", "bench.observability.receiver", kind, str(receiver_port), str(counts)])  # fmt: skip
            api, xds = free_port(), free_port()
            isthmus = [sys.executable, "-m", "isthmus.cli"]
            procs.insert(1, receiver)  # procs[:3]: nginx, the receiver, the control plane
            procs.append(subprocess.Popen([*isthmus, "cp", "run", "--store", "memory", "--api-address", f"127.0.0.1:{api}",
                                           "--xds-address", f"127.0.0.1:{xds}", "--log-level", "warning", "--dp-auth", "none"]))  # fmt: skip
            cp = f"http://127.0.0.1:{api}"
            wait_http(cp + "/")
            http = httpx.Client(base_url=cp)
            mesh = {
                "type": "Mesh",
                "name": "bench",
                "skipCreatingInitialPolicies": ["*"],
                "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]},
            }
            http.put("/meshes/bench", json=mesh).raise_for_status()
            log_file = tmp / "access.log"
            metrics_ports = {"client-obs": free_port(), "server-obs": free_port()}
            reg = default_registry()
            for policy in policies(log_file, receiver_port, metrics_ports, observe, tracer, overall):
                rtype = reg.kind(str(policy["type"]))
                assert rtype is not None, policy["type"]
                http.put(f"/meshes/bench/{rtype.plural}/{policy['name']}", json=policy).raise_for_status()
            outs = {BARE: free_port(), OBSERVED: free_port()}
            docs = {}
            for suffix, path in (("bare", BARE), ("obs", OBSERVED)):
                docs[f"server-{suffix}"] = dataplane(
                    f"server-{suffix}", f"server-{suffix}", free_port(), nginx_port
                )
                docs[f"client-{suffix}"] = dataplane(
                    f"client-{suffix}",
                    f"client-{suffix}",
                    free_port(),
                    free_port(),
                    outs[path],
                    f"server-{suffix}",
                )
            agents: dict[str, int] = {}
            for name, text in docs.items():
                (tmp / f"{name}.yaml").write_text(text)
                agents[name] = len(procs)
                procs.append(subprocess.Popen([*isthmus, "dp", "run", "--cp-address", cp, "--dataplane-file", str(tmp / f"{name}.yaml"),
                                               "--admin-port", "0", "--work-dir", str(tmp / f"work-{name}"), "--log-level", "warning"]))  # fmt: skip
            for port in outs.values():
                wait_http(f"http://127.0.0.1:{port}/", 60)
            metrics_urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports.values()]
            metrics_urls = metrics_urls if "metric" in observe else []
            for url in metrics_urls:
                wait_http(url, 30)
            scraper = Scraper(metrics_urls)
            envoys = {
                path: envoy_children([procs[agents[f"{side}-{suffix}"]].pid for side in ("client", "server")])
                for suffix, path in (("bare", BARE), ("obs", OBSERVED))
            }
            names = list(outs)
            for name in names:
                wrk(f"http://127.0.0.1:{outs[name]}/", 2)  # warm-up
            receiver_cpu, observed_requests = 0.0, 0.0
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    if name == OBSERVED:
                        before = cpu_seconds([receiver.pid])
                        with scraper:
                            results[name].append(
                                wrk(f"http://127.0.0.1:{outs[name]}/", duration, envoys[name])
                            )
                        receiver_cpu += cpu_seconds([receiver.pid]) - before
                        observed_requests += results[name][-1]["requests"]
                    else:
                        results[name].append(wrk(f"http://127.0.0.1:{outs[name]}/", duration, envoys[name]))
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
            receiver.terminate()
            receiver.wait(15)
            spans, batches = read_counts(counts)
            evidence = {
                "access-log lines written": float(_count_lines(log_file)),
                f"spans received ({tracer})": float(spans),
                "span batches received": float(batches),
                "trace receiver CPU ns per observed request": receiver_cpu * 1e9 / max(observed_requests, 1),
                "metrics scrapes": float(scraper.scrapes),
                "samples in the last scrape": float(scraper.samples),
            }
        finally:
            # the data planes first, while the control plane is there to take their deregistration
            for group in (procs[3:], procs[:3]):
                for p in group:
                    p.terminate()
                for p in group:
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
    return medians(results), evidence


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument(
        "--observe", default="log,trace,metric", help="the policies of the observed path (to find costs)"
    )
    ap.add_argument("--tracer", choices=TRACERS, default=DEFAULT_TRACER, help="the MeshTrace backend")
    ap.add_argument("--overall", type=int, default=10, help="MeshTrace sampling.overall (to find costs)")
    args = ap.parse_args()
    observe = frozenset(k.strip() for k in args.observe.split(",") if k.strip())
    if not observe <= KINDS:
        ap.error(f"--observe: {', '.join(sorted(observe - KINDS))} is not one of log, trace, metric")
    med, evidence = run(args.rounds, args.duration, observe, args.tracer, args.overall)
    print(f"\nwrk -t1 -c50, {args.rounds} rounds x {args.duration}s, interleaved, medians (nginx upstream)")
    print("\n".join(table(med, evidence)))


if __name__ == "__main__":
    main()
