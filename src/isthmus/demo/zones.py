"""Multi-zone processes in network namespaces (for ``isthmus demo --multizone``, its test and ``bench.multizone``).

A global control plane in the host's namespace (its KDS port on the bridge address), and per zone, inside the
zone's namespace (:mod:`isthmus.demo.netns`): a zone control plane (its API, xDS and Kong Admin API on the zone's
loopback, connecting out to the global with a zone token), a zone ingress on the zone's address, sidecars, demo
apps and gateways. Every part is a child process running the command a user would run
(``ip netns exec <ns> isthmus ...``); requests to a zone's loopback run on a thread inside the namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from isthmus.demo.netns import Network, Zone

T = TypeVar("T")
ISTHMUS = (sys.executable, "-m", "isthmus.cli")


@dataclass(frozen=True)
class ZonePorts:
    """The same in every zone (each namespace has its own port space)."""

    api: int = 5681
    api_tls: int = 5682
    xds: int = 5678
    kong_admin: int = 8001
    ingress: int = 10001


@dataclass(frozen=True)
class GlobalPorts:
    api: int = 5681
    api_tls: int = 5682
    xds: int = 5678
    kds: int = 5685


class Child:
    """One child process (restartable), its output in ``log``."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to its process group after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy (exceptions count as not yet); RuntimeError after
    ``timeout`` seconds, naming ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not yet: keep polling until the deadline
            last = f" (last: {exc!r})"
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{last}")


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One HTTP request with a fresh connection (its socket in the calling thread's namespace)."""
    with httpx.Client(timeout=kwargs.pop("timeout", 10)) as client:
        return client.request(method, url, **kwargs)


class Zones:
    """The global control plane and the zones' processes under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        network: Network,
        *,
        global_ports: GlobalPorts = GlobalPorts(),
        zone_ports: ZonePorts = ZonePorts(),
    ) -> None:
        self.dir = data_dir
        self.network = network
        self.gports = global_ports
        self.zports = zone_ports
        self.children: list[Child] = []
        self.named: dict[str, Child] = {}
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)

    # -- processes --------------------------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.dir / "logs" / f"{name}.log").start()
        self.children.append(child)
        self.named[name] = child
        return child

    def isthmus(self, name: str, zone: str | None, *args: str) -> Child:
        command = [*ISTHMUS, *args]
        return self.spawn(name, self.zone(zone).command(*command) if zone else command)

    def zone(self, name: str) -> Zone:
        return self.network.zones[name]

    def stop(self) -> None:
        """Stop every child: all asked at once (data planes drain in parallel), each waited for."""
        for child in reversed(self.children):
            child.terminate()
        for child in reversed(self.children):
            child.stop()

    # -- control planes ---------------------------------------------------------------------------------------

    @property
    def global_url(self) -> str:
        return f"http://127.0.0.1:{self.gports.api}"

    @property
    def kds_url(self) -> str:
        return f"grpcs://{self.network.host_address}:{self.gports.kds}"

    def global_dir(self) -> Path:
        return self.dir / "global"

    def start_global(self) -> None:
        p = self.gports
        self.isthmus(
            "global-cp", None, "cp", "run", "--mode", "global", "--data-dir", str(self.global_dir()),
            "--api-address", f"127.0.0.1:{p.api}", "--api-tls-address", f"127.0.0.1:{p.api_tls}",
            "--xds-address", f"127.0.0.1:{p.xds}", "--kds-address", f"{self.network.host_address}:{p.kds}",
            "--gateway-admin-address", "off", "--log-level", "warning",
        )  # fmt: skip
        self.wait_global()

    def wait_global(self) -> None:
        wait_until(lambda: request("GET", self.global_url + "/").status_code == 200, 60, "the global CP")

    def global_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return request(method, self.global_url + path, **kwargs)

    def apply_global(self, text: str) -> None:
        for doc in yaml.safe_load_all(text):
            if doc:
                check(
                    self.global_call("PUT", resource_path(doc), json=doc),
                    f"apply {doc['type']} on the global",
                )

    def start_zone_cp(self, zone: str) -> None:
        zdir = self.dir / zone
        zdir.mkdir(exist_ok=True)
        token = self.global_call("POST", "/tokens/zone", json={"zone": zone})
        check(token, f"a zone token for {zone}")
        token_file = zdir / "zone-token"
        write_private(token_file, token.text)
        p = self.zports
        self.isthmus(
            f"{zone}-cp", zone, "cp", "run", "--mode", "zone", "--zone", zone, "--data-dir", str(zdir / "cp"),
            "--global-address", self.kds_url, "--zone-token-file", str(token_file),
            "--ca-cert-file", str(self.global_dir() / "tls" / "ca.crt"),
            "--api-address", f"127.0.0.1:{p.api}", "--api-tls-address", f"127.0.0.1:{p.api_tls}",
            "--xds-address", f"127.0.0.1:{p.xds}", "--gateway-admin-address", f"127.0.0.1:{p.kong_admin}",
            "--log-level", "warning",
        )  # fmt: skip
        self.wait_zone_cp(zone)

    def wait_zone_cp(self, zone: str) -> None:
        wait_until(lambda: self.zone_call(zone, "GET", "/").status_code == 200, 60, f"the {zone} CP")

    def zone_call(self, zone: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the zone control plane's REST API (as an admin: from the zone's loopback)."""
        return self.zone(zone).run(request, method, f"http://127.0.0.1:{self.zports.api}{path}", **kwargs)

    def kong(self, zone: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A request to the zone's Kong Admin API; its JSON answer (RuntimeError unless 2xx)."""
        resp = self.zone(zone).run(
            request, method, f"http://127.0.0.1:{self.zports.kong_admin}{path}", **kwargs
        )
        check(resp, f"{method} {path} on {zone}'s Kong Admin API")
        return resp.json() if resp.content else {}  # type: ignore[no-any-return]

    def apply_zone(self, zone: str, text: str) -> None:
        for doc in yaml.safe_load_all(text):
            if doc:
                check(
                    self.zone_call(zone, "PUT", resource_path(doc), json=doc),
                    f"apply {doc['type']} on {zone}",
                )

    def zone_has(self, zone: str, path: str) -> dict[str, Any] | None:
        resp = self.zone_call(zone, "GET", path)
        return resp.json() if resp.status_code == 200 else None  # type: ignore[no-any-return]

    # -- data planes ------------------------------------------------------------------------------------------

    def _token(self, zone: str, name: str, proxy_type: str = "dataplane") -> Path:
        body: dict[str, str] = {"mesh": "default", "name": name}
        if proxy_type != "dataplane":
            body["type"] = proxy_type
        resp = self.zone_call(zone, "POST", "/tokens/dataplane", json=body)
        check(resp, f"a data-plane token for {name}")
        path = self.dir / zone / f"token-{name}"
        write_private(path, resp.text)
        return path

    def _dp_args(self, zone: str, name: str, file: Path, token: Path, admin_port: int) -> list[str]:
        return [
            "dp", "run", "--cp-address", f"https://127.0.0.1:{self.zports.api_tls}",
            "--ca-cert-file", str(self.dir / zone / "cp" / "tls" / "ca.crt"),
            "--dataplane-token-file", str(token), "--dataplane-file", str(file),
            "--admin-port", str(admin_port), "--work-dir", str(self.dir / zone / f"work-{name}"),
            "--log-level", "warning",
        ]  # fmt: skip

    def start_ingress(self, zone: str, admin_port: int = 9901) -> str:
        """The zone's ingress on its address; its name."""
        name = f"zi-{zone}"
        address, port = self.zone(zone).address, self.zports.ingress
        file = self.dir / zone / f"{name}.yaml"
        file.write_text(
            f"type: ZoneIngress\nname: {name}\nzone: {zone}\nnetworking:\n  address: {address}\n  port: {port}\n"
            f"  advertisedAddress: {address}\n  advertisedPort: {port}\n"
        )
        token = self._token(zone, name, "ingress")
        args = [
            "dp",
            "run",
            "--proxy-type",
            "ingress",
            *self._dp_args(zone, name, file, token, admin_port)[2:],
        ]
        self.isthmus(name, zone, *args)
        return name

    def start_app(self, zone: str, service: str, instance: str, port: int, version: str = "v1") -> None:
        """The demo app, as the child ``app-<instance>`` (stop and start it again by that name)."""
        self.isthmus(
            f"app-{instance}", zone, "demo", "app", "--service", service, "--instance", instance,
            "--port", str(port), "--version", version,
        )  # fmt: skip

    def start_sidecar(self, zone: str, dataplane: str, admin_port: int) -> None:
        doc = yaml.safe_load(dataplane)
        name = doc["name"]
        file = self.dir / zone / f"dp-{name}.yaml"
        file.write_text(dataplane)
        self.isthmus(
            f"dp-{name}", zone, *self._dp_args(zone, name, file, self._token(zone, name), admin_port)
        )

    def start_gateway(
        self, zone: str, name: str, service: str, listen: int, admin_port: int, listen_tls: int | None = None
    ) -> None:
        file = self.dir / zone / f"gw-{name}.yaml"
        file.write_text(
            f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {self.zone(zone).address}\n"
            f"  gateway:\n    type: DELEGATED\n    tags:\n      kuma.io/service: {service}\n"
        )
        args = self._dp_args(zone, name, file, self._token(zone, name), admin_port)
        args[2:2] = [
            "--proxy-type",
            "gateway",
            "--proxy-listen",
            f"0.0.0.0:{listen}",
            "--workspace",
            "default",
        ]
        if listen_tls is not None:
            args[2:2] = ["--proxy-listen-tls", f"0.0.0.0:{listen_tls}"]
        self.isthmus(f"gw-{name}", zone, *args)

    def envoy_admin(self, zone: str, admin_port: int, path: str) -> httpx.Response:
        return self.zone(zone).run(request, "GET", f"http://127.0.0.1:{admin_port}{path}")


def resource_path(doc: Mapping[str, Any]) -> str:
    from isthmus.catalog import default_registry

    if doc["type"] == "Mesh":
        return f"/meshes/{doc['name']}"
    rtype = default_registry().kind(doc["type"])
    if rtype is None:
        raise RuntimeError(f"unknown kind {doc['type']}")
    return f"/meshes/{doc['mesh']}/{rtype.plural}/{doc['name']}"


def check(resp: httpx.Response, what: str) -> None:
    if resp.status_code // 100 != 2:
        raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:300]}")


def write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
