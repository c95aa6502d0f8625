"""Real processes for end-to-end tests: a control plane, demo services and sidecar agents (real Envoys)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from isthmus.catalog import default_registry
from tests.conftest import free_port

ISTHMUS = [sys.executable, "-m", "isthmus.cli"]
T = TypeVar("T")


def wait_for(
    check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last!r}" if last else ""))


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ControlPlane:
    """``isthmus cp run`` on free ports, its data directory (and TLS CA) in ``tmp/cp-data``.

    ``url`` is the plain API on loopback (admin, as the CLI uses it); sidecars register over ``https_url``
    and verify the control plane against ``ca_file``."""

    def __init__(self, tmp: Path, store: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.api_tls_port = free_port()
        self.xds_port = free_port()
        self.gateway_admin_port = free_port()
        self.data_dir = tmp / "cp-data"
        self.store = store or f"sqlite:{tmp / 'cp.db'}"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.https_url = f"https://127.0.0.1:{self.api_tls_port}"
        self.extra_args = extra_args
        self.proc: Proc | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def start(self) -> ControlPlane:
        args = [
            *ISTHMUS,
            "cp",
            "run",
            "--store",
            self.store,
            "--data-dir",
            str(self.data_dir),
            "--api-address",
            f"127.0.0.1:{self.api_port}",
            "--api-tls-address",
            f"127.0.0.1:{self.api_tls_port}",
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--gateway-admin-address",
            f"127.0.0.1:{self.gateway_admin_port}",
            "--log-level",
            "warning",
            *self.extra_args,
        ]
        self.proc = Proc("control-plane", args, self.tmp).start()
        wait_for(lambda: self.http.get("/").status_code == 200, 30, what="control plane API")
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code (0 when it stopped by itself)."""
        return self.proc.stop() if self.proc else None

    def apply(self, text: str) -> None:
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if doc["type"] == "Mesh":
                path = f"/meshes/{doc['name']}"
            else:
                rtype = default_registry().kind(doc["type"])
                assert rtype is not None, f"unknown kind {doc['type']}"
                plural = rtype.plural
                path = f"/meshes/{doc['mesh']}/{plural}/{doc['name']}"
            resp = self.http.put(path, json=doc)
            assert resp.status_code in (200, 201), resp.text

    def delete(self, path: str) -> None:
        resp = self.http.delete(path)
        assert resp.status_code == 200, resp.text

    def dataplane_token(self, mesh: str, name: str) -> str:
        """A data-plane token for Dataplane ``mesh/name`` (asked as an admin, over loopback); the mesh must exist."""
        resp = self.http.post("/tokens/dataplane", json={"mesh": mesh, "name": name})
        assert resp.status_code == 200, f"POST /tokens/dataplane: {resp.status_code} {resp.text}"
        return resp.text

    def insight(self, mesh: str, name: str) -> dict[str, Any]:
        resp = self.http.get(f"/meshes/{mesh}/dataplanes+insights/{name}")
        resp.raise_for_status()
        return resp.json()["dataplaneInsight"]  # type: ignore[no-any-return]


class Sidecar:
    """``isthmus dp run`` against ``cp`` over HTTPS (or ``cp_address``), verifying it with ``ca_file``
    (default: the CP's CA) unless ``verify`` is False, with a data-plane token for its name from the CP unless
    ``token`` is False (the Dataplane's mesh must exist before ``start``)."""

    def __init__(
        self,
        tmp: Path,
        cp: ControlPlane,
        dataplane: str,
        *,
        ca_file: Path | None = None,
        cp_address: str | None = None,
        verify: bool = True,
        token: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.extra_args = extra_args  # more ``dp run`` options (``--dns-port N``)
        doc = yaml.safe_load(dataplane)
        self.name = doc["name"]
        self.mesh = doc["mesh"]
        self.admin_port = free_port()
        self.cp = cp
        self.file = tmp / f"dp-{self.name}.yaml"
        self.file.write_text(dataplane)
        self.work = tmp / f"work-{self.name}"
        self.proc: Proc | None = None
        self.tmp = tmp
        self.ca_file = ca_file or cp.ca_file
        self.cp_address = cp_address or cp.https_url
        self.verify = verify  # False: no --ca-cert-file
        self.token = token  # False: no --dataplane-token-file
        self.token_file = tmp / f"token-{self.name}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> Sidecar:
        if self.token:
            self.token_file.write_text(self.cp.dataplane_token(self.mesh, self.name))
            self.token_file.chmod(0o600)
        args = [
            *ISTHMUS,
            "dp",
            "run",
            "--cp-address",
            self.cp_address,
            *(("--ca-cert-file", str(self.ca_file)) if self.verify else ()),
            *(("--dataplane-token-file", str(self.token_file)) if self.token else ()),
            "--dataplane-file",
            str(self.file),
            "--admin-port",
            str(self.admin_port),
            "--work-dir",
            str(self.work),
            "--log-level",
            "warning",
            *self.extra_args,
        ]
        self.proc = Proc(f"dp-{self.name}", args, self.tmp).start()
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def wait_listener(self, name_part: str, timeout: float = 30.0) -> None:
        def has() -> bool:
            resp = httpx.get(f"{self.admin}/listeners?format=json", timeout=2)
            names = [entry["name"] for entry in resp.json().get("listener_statuses", [])]
            return any(name_part in n for n in names)

        wait_for(has, timeout, what=f"listener {name_part} on {self.name}")


class App:
    def __init__(
        self,
        tmp: Path,
        service: str,
        *,
        version: str = "v1",
        instance: str = "",
        upstream: str = "",
        tcp: bool = False,
        fail_all: bool = False,
    ) -> None:
        self.port = free_port()
        args = [*ISTHMUS, "demo", "app", "--service", service, "--port", str(self.port), "--version", version]
        if instance:
            args += ["--instance", instance]
        if upstream:
            args += ["--upstream", upstream]
        if tcp:
            args.append("--tcp")
        if fail_all:
            args.append("--fail-all")
        self.proc = Proc(f"app-{instance or service}-{self.port}", args, tmp)

    def start(self) -> App:
        self.proc.start()
        import socket

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(listening, 20, what=f"app on {self.port}")
        return self

    def stop(self) -> None:
        self.proc.stop()


@contextmanager
def running(*items: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for item in reversed(items):
            item.stop()


def allow_all(mesh: str = "default") -> str:
    """A MeshTrafficPermission allowing every mesh member (YAML, for ``ControlPlane.apply``)."""
    return f"""type: MeshTrafficPermission
mesh: {mesh}
name: allow-all
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default: {{action: Allow}}
"""


# a mesh with the builtin CA's mTLS where everyone may talk to everyone
MTLS_MESH = """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - {name: ca-1, type: builtin}
---
""" + allow_all()
