"""Data-plane benchmark: throughput and latency through the mesh path Isthmus configures, against the same path
through hand-written static Envoy configs with the same certificates, and against the upstream directly.

    client --wrk--> [client sidecar] --mTLS, HTTP/2--> [server sidecar] --HTTP/1.1--> nginx

Paths, measured in interleaved rounds in one run (wrk -t1 -c50, medians over rounds):
  direct                wrk -> nginx
  hand-written minimal  two Envoys with static bootstraps: mTLS with certificates from the mesh CA, SPIFFE SAN
                        check, HTTP/2 between them, nothing else
  hand-written          the same plus what a mesh inbound must do: RBAC on the caller's SPIFFE identity and the
                        caller's identity forwarded to the app (XFCC, as Kuma does); the baseline of the target
  isthmus               two Envoys started by `isthmus dp run`, configured over ADS by `isthmus cp run`

    python -m bench.dataplane [--rounds 5] [--duration 10]

Needs nginx and wrk (Debian packages). Target (issue #2): isthmus >= 0.95 x hand-written req/s, p99 within 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
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
from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.pki.ca import CertificateAuthority
from isthmus.pki.issuer import issue_workload_certificate
from isthmus.store.sql import SqlStore

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


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def wrk(url: str, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


def static_bootstraps(
    tmp: Path, ca: CertificateAuthority, nginx_port: int, *, authz: bool
) -> tuple[Path, Path, int]:
    """A client and a server Envoy bootstrap by hand. With ``authz`` the server does what a mesh inbound must:
    an RBAC filter that admits the caller's SPIFFE identity and the caller's identity forwarded in XFCC."""
    tag = "authz" if authz else "minimal"
    certs = {}
    for svc in ("client", "server"):
        leaf = issue_workload_certificate(
            ca, mesh="bench", services=[svc], tags=None, lifetime=timedelta(hours=24)
        )
        (tmp / f"{svc}-{tag}.crt").write_bytes(leaf.cert_pem)
        (tmp / f"{svc}-{tag}.key").write_bytes(leaf.key_pem)
        certs[svc] = (str(tmp / f"{svc}-{tag}.crt"), str(tmp / f"{svc}-{tag}.key"))
    (tmp / "ca.crt").write_bytes(ca.cert_pem)
    client_port, server_port = free_port(), free_port()

    def common(svc: str, san: dict[str, str], alpn: list[str]) -> dict[str, Any]:
        return {
            "tls_certificates": [
                {"certificate_chain": {"filename": certs[svc][0]}, "private_key": {"filename": certs[svc][1]}}
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(tmp / "ca.crt")},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
            },
            "alpn_protocols": alpn,
        }

    def hcm(cluster: str, inbound: bool = False) -> dict[str, Any]:
        router = {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
        rbac = {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "policies": {
                        "allow-client": {
                            "permissions": [{"any": True}],
                            "principals": [
                                {"authenticated": {"principal_name": {"exact": "spiffe://bench/client"}}}
                            ],
                        }
                    }
                },
            },
        }
        extra: dict[str, Any] = {}
        if inbound and authz:
            extra = {
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"uri": True},
            }
        return {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "codec_type": "AUTO",
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                        }
                    ]
                },
                "http_filters": [rbac, router] if inbound and authz else [router],
                **extra,
            },
        }

    def cluster(name: str, port: int, tls: dict[str, Any] | None, h2: bool) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": port}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if h2:
            c["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        if tls:
            c["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    **tls,
                },
            }
        return c

    def listener(port: int, filters: list[dict[str, Any]], tls: dict[str, Any] | None) -> dict[str, Any]:
        chain: dict[str, Any] = {"filters": filters}
        if tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    **tls,
                },
            }
        return {
            "name": f"l{port}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain],
        }

    client = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {
            "listeners": [listener(client_port, [hcm("server")], None)],
            "clusters": [
                cluster(
                    "server",
                    server_port,
                    {"common_tls_context": common("client", {"exact": "spiffe://bench/server"}, ["h2"])},
                    True,
                )
            ],
        },
    }
    server = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {
            "listeners": [
                listener(
                    server_port,
                    [hcm("local", inbound=True)],
                    {
                        "common_tls_context": common(
                            "server", {"prefix": "spiffe://bench/"}, ["h2", "http/1.1"]
                        )
                    },
                )
            ],
            "clusters": [cluster("local", nginx_port, None, False)],
        },
    }
    (tmp / f"client-{tag}.json").write_text(json.dumps(client))
    (tmp / f"server-{tag}.json").write_text(json.dumps(server))
    return tmp / f"client-{tag}.json", tmp / f"server-{tag}.json", client_port


def dataplane(name: str, service: str, inbound: int, app: int, outbound: int | None, target: str = "") -> str:
    out = (
        f"  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: {target}\n" if outbound else ""
    )
    return (
        f"type: Dataplane\nmesh: bench\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
        f"  - port: {inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: {service}\n"
        f"      kuma.io/protocol: http\n{out}"
    )


def load_ca(db: Path) -> CertificateAuthority:
    async def read() -> CertificateAuthority:
        store = SqlStore(f"sqlite+aiosqlite:///{db}")
        await store.start()
        try:
            page = await store.list("Secret", "bench")
            data = page.items[0].spec["data"]
            return CertificateAuthority(cert_pem=data["cert"].encode(), key_pem=data["key"].encode())
        finally:
            await store.close()

    return asyncio.run(read())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is required: apt-get install -y nginx wrk")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    envoy = str(find_envoy_binary())
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            nginx_port = free_port()
            (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, port=nginx_port))
            procs.append(
                subprocess.Popen(
                    [nginx_bin, "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")]
                )
            )
            wait_http(f"http://127.0.0.1:{nginx_port}/")

            api, xds = free_port(), free_port()
            db = tmp / "cp.db"
            isthmus = [sys.executable, "-m", "isthmus.cli"]
            procs.append(subprocess.Popen([*isthmus, "cp", "run", "--store", f"sqlite:{db}", "--api-address", f"127.0.0.1:{api}",
                                           "--xds-address", f"127.0.0.1:{xds}", "--log-level", "warning"]))  # fmt: skip
            cp = f"http://127.0.0.1:{api}"
            wait_http(cp + "/")
            http = httpx.Client(base_url=cp)
            http.put(
                "/meshes/bench",
                json={
                    "type": "Mesh",
                    "name": "bench",
                    "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]},
                },
            ).raise_for_status()
            http.put(
                "/meshes/bench/meshtrafficpermissions/allow",
                json={
                    "type": "MeshTrafficPermission",
                    "mesh": "bench",
                    "name": "allow",
                    "spec": {
                        "targetRef": {"kind": "Mesh"},
                        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
                    },
                },
            ).raise_for_status()
            mesh_out = free_port()
            for name, doc in (
                ("server", dataplane("server", "server", free_port(), nginx_port, None)),
                ("client", dataplane("client", "client", free_port(), free_port(), mesh_out, "server")),
            ):
                (tmp / f"{name}.yaml").write_text(doc)
                procs.append(subprocess.Popen([*isthmus, "dp", "run", "--cp-address", cp, "--dataplane-file", str(tmp / f"{name}.yaml"),
                                               "--admin-port", "0", "--work-dir", str(tmp / f"work-{name}"), "--log-level", "warning"]))  # fmt: skip
            wait_http(f"http://127.0.0.1:{mesh_out}/", 60)

            ca = load_ca(db)
            static_ports = {}
            for authz in (True, False):
                client_cfg, server_cfg, static_ports[authz] = static_bootstraps(
                    tmp, ca, nginx_port, authz=authz
                )
                for cfg in (server_cfg, client_cfg):
                    procs.append(subprocess.Popen([envoy, "-c", str(cfg), "--concurrency", "1",
                                                   "--disable-hot-restart", "-l", "warning"]))  # fmt: skip
                wait_http(f"http://127.0.0.1:{static_ports[authz]}/")

            paths = {
                "direct (nginx)": f"http://127.0.0.1:{nginx_port}/",
                "hand-written minimal": f"http://127.0.0.1:{static_ports[False]}/",
                "hand-written": f"http://127.0.0.1:{static_ports[True]}/",
                "isthmus mesh": f"http://127.0.0.1:{mesh_out}/",
            }
            for url in paths.values():  # warm-up
                wrk(url, 2)
            results: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
            names = list(paths)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no path always first
                    results[name].append(wrk(paths[name], args.duration))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()

    med = {
        k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50", "p99", "non2xx")}
        for k, v in results.items()
    }
    base = med["hand-written"]
    print(
        f"\nData plane: wrk -t1 -c50, {args.rounds} rounds x {args.duration}s, medians (nginx upstream, 2 cores)"
    )
    print(
        f"{'path':<22} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs hand':>14} {'p99 vs hand':>12} {'non-2xx':>8}"
    )
    for name, m in med.items():
        print(f"{name:<22} {m['rps']:>10.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['rps'] / base['rps']:>14.3f} "
              f"{m['p99'] / base['p99']:>12.3f} {m['non2xx']:>8.0f}")  # fmt: skip
    mesh = med["isthmus mesh"]
    ok = mesh["rps"] >= 0.95 * base["rps"] and mesh["p99"] <= 1.10 * base["p99"]
    print(f"target (>= 0.95 x req/s, p99 within 10%): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
