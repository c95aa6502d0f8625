"""``isthmus demo``: a control plane on the embedded SQLite store, three demo services with real Envoy
sidecars, mTLS between them, and a printout of what to try next.

Security is on as in production: each sidecar gets a data-plane token for its own name from the API and
registers over HTTPS; it and its Envoy verify the control plane against the CA in ``DATA_DIR/tls/ca.crt``.

Every part runs as a child process of the demo (the same commands a user would run by hand), so what the demo
shows is exactly what ``isthmus cp run``, ``isthmus dp run`` and the REST API do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 1h
"""

ALLOW_ALL = """type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Allow
"""

DENY = """type: MeshTrafficPermission
mesh: default
name: deny-web-to-backend
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: MeshService
      name: web
    default:
      action: Deny
"""


@dataclass(frozen=True)
class DemoOptions:
    data_dir: str = ".isthmus-demo"
    api_port: int = 5681
    xds_port: int = 5678
    check: bool = False
    api_tls_port: int = 5682


@dataclass(frozen=True)
class Service:
    name: str  # dataplane name
    service: str
    version: str
    app_port: int
    inbound_port: int
    outbound: tuple[int, str] | None = None

    def dataplane(self) -> str:
        out = ""
        if self.outbound:
            out = f"\n  outbound:\n  - port: {self.outbound[0]}\n    tags:\n      kuma.io/service: {self.outbound[1]}"
        return (
            f"type: Dataplane\nmesh: default\nname: {self.name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {self.inbound_port}\n    servicePort: {self.app_port}\n    tags:\n"
            f"      kuma.io/service: {self.service}\n      kuma.io/protocol: http\n      version: {self.version}{out}\n"
        )


SERVICES = (
    Service("web-1", "web", "v1", 18001, 28001, (15001, "backend")),
    Service("backend-1", "backend", "v1", 18002, 28002),
    Service("backend-2", "backend", "v2", 18003, 28003),
)
WEB_TO_BACKEND = "http://127.0.0.1:15001"


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.dir = Path(options.data_dir).resolve()
        self.cp_url = f"http://127.0.0.1:{options.api_port}"
        self.cp_https_url = f"https://127.0.0.1:{options.api_tls_port}"
        self.children: list[asyncio.subprocess.Process] = []

    async def spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        log = (self.dir / "logs" / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "isthmus.cli", *args, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        self.children.append(proc)
        return proc

    async def wait_http(self, url: str, ok: set[int], timeout: float = 30.0) -> httpx.Response:
        async with httpx.AsyncClient(timeout=3) as client:
            deadline = asyncio.get_running_loop().time() + timeout
            last = ""
            while asyncio.get_running_loop().time() < deadline:
                try:
                    resp = await client.get(url)
                    if resp.status_code in ok:
                        return resp
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{url} did not answer {sorted(ok)} within {timeout:.0f}s (last: {last})")

    async def dataplane_token(self, name: str) -> Path:
        """A data-plane token for Dataplane ``default/name`` (asked on loopback, as an admin), in a 0600 file."""
        async with httpx.AsyncClient(base_url=self.cp_url, timeout=10) as client:
            resp = await client.post("/tokens/dataplane", json={"mesh": "default", "name": name})
        if resp.status_code != 200:
            raise RuntimeError(f"POST /tokens/dataplane: {resp.status_code} {resp.text}")
        path = self.dir / "tokens" / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(resp.text)
        return path

    async def apply(self, text: str, path: str) -> None:
        import yaml

        async with httpx.AsyncClient(base_url=self.cp_url, timeout=10) as client:
            resp = await client.put(path, json=yaml.safe_load(text))
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"PUT {path}: {resp.status_code} {resp.text}")

    async def start(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the store, the CA key and the tokens
        (self.dir / "logs").mkdir(exist_ok=True)
        print(f"Starting the control plane (SQLite store in {self.dir}) ...")
        await self.spawn(
            "control-plane", "cp", "run", "--data-dir", str(self.dir),
            "--api-address", f"127.0.0.1:{self.options.api_port}",
            "--xds-address", f"127.0.0.1:{self.options.xds_port}",
            "--api-tls-address", f"127.0.0.1:{self.options.api_tls_port}", "--log-level", "warning",
            "--gateway-admin-address", "off",
        )  # fmt: skip
        await self.wait_http(self.cp_url + "/", {200})
        await self.apply(MESH, "/meshes/default")
        await self.apply(ALLOW_ALL, "/meshes/default/meshtrafficpermissions/allow-all")
        (self.dir / "deny.yaml").write_text(DENY)
        for svc in SERVICES:
            upstream = WEB_TO_BACKEND if svc.outbound else ""
            args = [
                "demo",
                "app",
                "--service",
                svc.service,
                "--port",
                str(svc.app_port),
                "--version",
                svc.version,
            ]
            args += ["--instance", svc.name] + (["--upstream", upstream] if upstream else [])
            await self.spawn(f"app-{svc.name}", *args)
            dp_file = self.dir / f"{svc.name}.yaml"
            dp_file.write_text(svc.dataplane())
            print(
                f"Starting {svc.service} ({svc.version}) on :{svc.app_port} with its sidecar on :{svc.inbound_port}"
            )
            token = await self.dataplane_token(svc.name)
            await self.spawn(
                f"dp-{svc.name}", "dp", "run", "--cp-address", self.cp_https_url,
                "--ca-cert-file", str(self.dir / "tls" / "ca.crt"), "--dataplane-token-file", str(token),
                "--dataplane-file", str(dp_file),
                "--admin-port", "0", "--work-dir", str(self.dir / "work" / svc.name), "--log-level", "warning",
            )  # fmt: skip
        resp = await self.wait_http(f"http://127.0.0.1:{SERVICES[0].app_port}/", {200}, timeout=60)
        print(
            f"\nTraffic flows over mTLS: web -> backend answered {resp.json()['upstream']['body']['instance']}\n"
        )

    async def check(self) -> None:
        """Used by tests: deny takes effect, then lifting it restores traffic."""
        await self.apply(DENY, "/meshes/default/meshtrafficpermissions/deny-web-to-backend")
        await self.wait_http(WEB_TO_BACKEND + "/", {403}, timeout=10)
        async with httpx.AsyncClient(base_url=self.cp_url) as client:
            await client.delete("/meshes/default/meshtrafficpermissions/deny-web-to-backend")
        await self.wait_http(WEB_TO_BACKEND + "/", {200}, timeout=10)
        print("Check passed: allowed traffic answered 200, a Deny permission answered 403.")

    def instructions(self) -> str:
        cp = f"--cp-address {self.cp_url}" if self.options.api_port != 5681 else ""
        return f"""What to try next (in another terminal, with the venv active: . .venv/bin/activate):

  isthmus get meshes {cp}
  isthmus get dataplanes {cp}
  curl -s http://127.0.0.1:{SERVICES[0].app_port}/        # web calls backend through its sidecar (mTLS)
  curl -s {WEB_TO_BACKEND}/                   # web's sidecar balances over backend-1 (v1) and backend-2 (v2)
  isthmus apply -f {self.dir / "deny.yaml"} {cp}   # deny web -> backend; the curl above now answers 403
  isthmus delete meshtrafficpermission deny-web-to-backend {cp}
  isthmus inspect dataplane backend-1 {cp}
  curl -s {self.cp_url}/meshes/default/dataplanes+insights
  curl -s --cacert {self.dir / "tls" / "ca.crt"} {self.cp_https_url}/   # the API over HTTPS, CP's own CA

Sidecars register over HTTPS with a data-plane token each ({self.dir / "tokens"}) and verify the control
plane's certificate against {self.dir / "tls" / "ca.crt"}.

Logs: {self.dir / "logs"}.  Press Ctrl-C to stop everything.
"""

    async def stop(self) -> None:
        for proc in reversed(self.children):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.children):
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


async def run_demo(options: DemoOptions) -> int:
    demo = Demo(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await demo.start()
        if options.check:
            await demo.check()
            return 0
        print(demo.instructions())
        await stop.wait()
        return 0
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Stopping the demo ...")
        await demo.stop()
