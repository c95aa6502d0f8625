"""Policy benchmark: configuration generation per proxy with many policies, and the data-plane cost of a
route, retry, timeout and circuit breaker on the mesh path.

1. Generation (in process): a mesh of 200 services, one data plane each with three outbounds, and 10 policies
   of every traffic-policy kind the control plane knows (mesh-wide and per-service), against the same mesh with
   only a MeshTrafficPermission (baseline), in the same run. Reports ms per proxy (IR + xDS + snapshot).
2. Data plane: two client sidecars call one server sidecar (mTLS, HTTP/2) in front of nginx; one client has a
   MeshHTTPRoute, MeshRetry, MeshTimeout and MeshCircuitBreaker on its outbound, the other none (the bare mesh
   path, the baseline). wrk alternates between them; medians over rounds. Target (issue #3): >= 0.95 x the bare
   path's requests/s.

    python -m bench.policies [--rounds 6 --duration 5] [--skip-dataplane]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.controlplane.__main__ import free_port
from bench.dataplane.__main__ import NGINX_CONF, dataplane, wait_http, wrk
from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.pki.ca import generate_ca
from isthmus.pki.issuer import issue_workload_certificate
from isthmus.resources.registry import Resource, parse_document
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate_packed

SERVICES = 200
PER_KIND = 10


def _to(service: str | None, default: dict[str, Any]) -> dict[str, Any]:
    ref = {"kind": "Mesh"} if service is None else {"kind": "MeshService", "name": service}
    return {"targetRef": ref, "default": default}


def policy_specs(i: int, service: str | None) -> dict[str, dict[str, Any]]:
    """One spec per kind; ``service`` None makes a mesh-wide one. Values vary with ``i`` so no two are equal."""
    top = {"kind": "Mesh"}
    return {
        "MeshTimeout": {
            "targetRef": top,
            "to": [
                _to(service, {"connectionTimeout": f"{2 + i}s", "http": {"requestTimeout": f"{10 + i}s"}})
            ],
        },
        "MeshRetry": {
            "targetRef": top,
            "to": [
                _to(
                    service,
                    {"http": {"numRetries": 1 + i % 4, "retryOn": ["5xx"]}, "tcp": {"maxConnectAttempt": 2}},
                )
            ],
        },
        "MeshCircuitBreaker": {
            "targetRef": top,
            "to": [
                _to(
                    service,
                    {
                        "connectionLimits": {"maxConnections": 1000 + i},
                        "outlierDetection": {"detectors": {"totalFailures": {"consecutive": 5 + i}}},
                    },
                )
            ],
        },
        "MeshHealthCheck": {
            "targetRef": top,
            "to": [
                _to(
                    service,
                    {"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3, "healthyThreshold": 1},
                )
            ],
        },
        "MeshLoadBalancingStrategy": {
            "targetRef": top,
            "to": [_to(service, {"loadBalancer": {"type": "LeastRequest" if i % 2 else "RoundRobin"}})],
        },
        "MeshFaultInjection": {
            "targetRef": top if service is None else {"kind": "MeshService", "name": service},
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"http": [{"delay": {"value": "1ms", "percentage": i}}]},
                }
            ],
        },
        "MeshRateLimit": {
            "targetRef": top if service is None else {"kind": "MeshService", "name": service},
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"local": {"http": {"requestRate": {"num": 1000 + i, "interval": "1s"}}}},
                }
            ],
        },
        "MeshHTTPRoute": {
            "targetRef": top,
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": service or "svc-0"},
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": f"/v{i}"}}],
                            "default": {
                                "backendRefs": [
                                    {"kind": "MeshService", "name": service or "svc-0", "weight": 100}
                                ]
                            },
                        }
                    ],
                }
            ],
        },
    }


def mesh_resources(with_policies: bool) -> tuple[Resource, list[Resource], list[Resource], list[str]]:
    reg = default_registry()
    mesh = parse_document(
        {
            "type": "Mesh",
            "name": "bench",
            "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]},
        },
        reg,
    )
    dps = []
    for i in range(SERVICES):
        doc = {
            "type": "Dataplane",
            "mesh": "bench",
            "name": f"dp-{i}",
            "networking": {
                "address": f"10.0.{i // 250}.{i % 250 + 1}",
                "inbound": [
                    {
                        "port": 8080,
                        "servicePort": 18080,
                        "tags": {"kuma.io/service": f"svc-{i}", "kuma.io/protocol": "http"},
                    }
                ],
                "outbound": [
                    {"port": 10001 + k, "tags": {"kuma.io/service": f"svc-{(i + k + 1) % SERVICES}"}}
                    for k in range(3)
                ],
            },
        }
        dps.append(parse_document(doc, reg))
    allow = {
        "targetRef": {"kind": "Mesh"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
    }
    policies = [
        parse_document(
            {"type": "MeshTrafficPermission", "mesh": "bench", "name": "allow", "spec": allow}, reg
        )
    ]
    kinds: list[str] = []
    if with_policies:
        for i in range(PER_KIND):
            service = None if i < 3 else f"svc-{i * 17 % SERVICES}"
            for kind, spec in policy_specs(i, service).items():
                if reg.kind(kind) is None:
                    continue
                if kind not in kinds:
                    kinds.append(kind)
                policies.append(
                    parse_document(
                        {"type": kind, "mesh": "bench", "name": f"{kind.lower()}-{i}", "spec": spec}, reg
                    )
                )
    return mesh, dps, policies, kinds


def round_permission(round_no: int) -> Resource:
    spec = {
        "targetRef": {"kind": "Mesh"},
        "from": [
            {
                "targetRef": {"kind": "MeshSubset", "tags": {"round": str(round_no)}},
                "default": {"action": "Deny"},
            }
        ],
    }
    doc = {"type": "MeshTrafficPermission", "mesh": "bench", "name": "per-round", "spec": spec}
    return parse_document(doc, default_registry())


def generation(rounds: int) -> list[tuple[str, float, float, float, int]]:
    ca = generate_ca("bench", backend="ca")
    leaf = issue_workload_certificate(
        ca, mesh="bench", services=["svc"], tags=None, lifetime=timedelta(hours=1)
    )
    identity = Identity(leaf.cert_pem.decode(), leaf.key_pem.decode())
    rows = []
    for label, with_policies in (("only MeshTrafficPermission", False), ("10 policies of each kind", True)):
        mesh, dps, policies, kinds = mesh_resources(with_policies)
        samples: list[float] = []
        for round_no in range(rounds + 1):  # round 0 warms up imports and memo tables; not measured
            # each round follows a MeshTrafficPermission change that reaches every inbound, as in
            # bench.controlplane: what did not change is shared by content (identical IR nodes), the rest is new
            ctx = build_mesh_context(mesh, dps, [*policies, round_permission(round_no)], ca.cert_pem.decode())
            for dp in dps:
                t0 = time.perf_counter()
                snapshot = Snapshot.of_resources(translate_packed(build_proxy_ir(ctx, dp.name, identity)))
                assert not snapshot.consistency_errors()
                if round_no:
                    samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        rows.append(
            (
                label + (f" ({len(kinds)} kinds)" if kinds else ""),
                statistics.mean(samples),
                samples[len(samples) // 2],
                samples[int(len(samples) * 0.99)],
                len(policies),
            )
        )
    return rows


POLICIES_ON_CLIENT = """
type: MeshHTTPRoute
mesh: bench
name: route
spec:
  targetRef: {kind: Dataplane, name: client-policies}
  to:
  - targetRef: {kind: MeshService, name: server}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs: [{kind: MeshService, name: server, weight: 100}]
---
type: MeshRetry
mesh: bench
name: retry
spec:
  targetRef: {kind: Dataplane, name: client-policies}
  to:
  - targetRef: {kind: MeshService, name: server}
    default: {http: {numRetries: 3, retryOn: [5xx]}}
---
type: MeshTimeout
mesh: bench
name: timeout
spec:
  targetRef: {kind: Dataplane, name: client-policies}
  to:
  - targetRef: {kind: MeshService, name: server}
    default: {connectionTimeout: 2s, http: {requestTimeout: 5s}}
---
type: MeshCircuitBreaker
mesh: bench
name: breaker
spec:
  targetRef: {kind: Dataplane, name: client-policies}
  to:
  - targetRef: {kind: MeshService, name: server}
    default:
      connectionLimits: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024}
      outlierDetection: {detectors: {totalFailures: {consecutive: 5}}}
"""


def dataplane_run(rounds: int, duration: int) -> dict[str, dict[str, float]]:
    import yaml

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[dict[str, float]]] = {"bare mesh path": [], "route+retry+timeout+breaker": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            nginx_port = free_port()
            (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, port=nginx_port))
            procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "e.log")]))
            wait_http(f"http://127.0.0.1:{nginx_port}/")
            api, xds = free_port(), free_port()
            isthmus = [sys.executable, "-m", "isthmus.cli"]
            procs.append(subprocess.Popen([*isthmus, "cp", "run", "--store", "memory", "--api-address", f"127.0.0.1:{api}",
                                           "--xds-address", f"127.0.0.1:{xds}", "--log-level", "warning"]))  # fmt: skip
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
            allow = {
                "targetRef": {"kind": "Mesh"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
            }
            doc = {"type": "MeshTrafficPermission", "mesh": "bench", "name": "allow", "spec": allow}
            http.put("/meshes/bench/meshtrafficpermissions/allow", json=doc).raise_for_status()
            reg = default_registry()
            for policy in yaml.safe_load_all(POLICIES_ON_CLIENT):
                rtype = reg.kind(policy["type"])
                if rtype is None:
                    print(f"note: {policy['type']} is not available; measured without it", file=sys.stderr)
                    continue
                http.put(f"/meshes/bench/{rtype.plural}/{policy['name']}", json=policy).raise_for_status()
            outs = {"bare mesh path": free_port(), "route+retry+timeout+breaker": free_port()}
            docs = [("server", dataplane("server", "server", free_port(), nginx_port, None))]
            docs.append(
                (
                    "client-bare",
                    dataplane(
                        "client-bare", "client", free_port(), free_port(), outs["bare mesh path"], "server"
                    ),
                )
            )
            docs.append(
                (
                    "client-policies",
                    dataplane(
                        "client-policies",
                        "client",
                        free_port(),
                        free_port(),
                        outs["route+retry+timeout+breaker"],
                        "server",
                    ),
                )
            )
            for name, text in docs:
                (tmp / f"{name}.yaml").write_text(text)
                procs.append(subprocess.Popen([*isthmus, "dp", "run", "--cp-address", cp, "--dataplane-file", str(tmp / f"{name}.yaml"),
                                               "--admin-port", "0", "--work-dir", str(tmp / f"work-{name}"), "--log-level", "warning"]))  # fmt: skip
            for port in outs.values():
                wait_http(f"http://127.0.0.1:{port}/", 60)
            names = list(outs)
            for name in names:
                wrk(f"http://127.0.0.1:{outs[name]}/", 2)  # warm-up
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    results[name].append(wrk(f"http://127.0.0.1:{outs[name]}/", duration))
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return {
        k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50", "p99", "non2xx")}
        for k, v in results.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--gen-rounds", type=int, default=3)
    ap.add_argument("--skip-dataplane", action="store_true")
    args = ap.parse_args()
    rows = generation(args.gen_rounds)
    base = rows[0][1]
    print(
        f"\nConfiguration generation per proxy ({SERVICES} services, {SERVICES} data planes, {args.gen_rounds} rounds)"
    )
    print(f"{'mesh':<48} {'policies':>9} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean vs base':>13}")
    for label, mean, p50, p99, count in rows:
        print(f"{label:<48} {count:>9} {mean:>8.3f} {p50:>8.3f} {p99:>8.3f} {mean / base:>13.2f}")
    if args.skip_dataplane:
        return
    med = dataplane_run(args.rounds, args.duration)
    bare = med["bare mesh path"]
    print(f"\nData plane: wrk -t1 -c50, {args.rounds} rounds x {args.duration}s, medians (nginx upstream)")
    print(f"{'path':<30} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs bare':>14} {'non-2xx':>8}")
    for name, m in med.items():
        print(
            f"{name:<30} {m['rps']:>10.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['rps'] / bare['rps']:>14.3f} {m['non2xx']:>8.0f}"
        )
    ratio = med["route+retry+timeout+breaker"]["rps"] / bare["rps"]
    print(f"target (>= 0.95 x the bare path's req/s): {'met' if ratio >= 0.95 else 'MISSED'} ({ratio:.3f})")


if __name__ == "__main__":
    main()
