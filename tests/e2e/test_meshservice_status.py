"""A MeshService's ``status.dataplaneProxies`` and ``status.tls`` with a real control plane and real sidecars:
the counts follow the data planes the control plane sees (an ADS stream open: connected; every port's inbound
ready, by Kuma's service probes: healthy), ``tls`` turns Ready once every selected proxy holds its mesh
certificate, and both show through the REST API and ``isthmus get meshservices -o yaml``."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.e2e.harness import ISTHMUS, App, ControlPlane, Sidecar, wait_for

pytestmark = pytest.mark.e2e

SETUP = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshService
mesh: default
name: backend
spec:
  selector:
    dataplaneTags:
      kuma.io/service: backend
  ports:
  - name: http
    port: 80
    targetPort: main
    appProtocol: http
"""


def backend(name: str, inbound_port: int, app_port: int) -> str:
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound_port}
    name: main
    servicePort: {app_port}
    serviceProbe:
      interval: 1s
      timeout: 1s
      healthyThreshold: 1
      unhealthyThreshold: 1
      tcp: {{}}
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
"""


class Backends:
    def __init__(self, tmp: Path) -> None:
        self.cp = ControlPlane(tmp).start()
        self.cp.apply(SETUP)
        self.apps = [App(tmp, "backend", instance=f"backend-{i}").start() for i in (1, 2)]
        self.sidecars = [
            Sidecar(tmp, self.cp, backend(f"backend-{i + 1}", free_port(), app.port)).start()
            for i, app in enumerate(self.apps)
        ]

    def stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()
        for app in self.apps:
            app.stop()
        self.cp.stop()

    def status(self) -> dict[str, Any]:
        resp = self.cp.http.get("/meshes/default/meshservices/backend")
        resp.raise_for_status()
        status: dict[str, Any] = resp.json().get("status") or {}
        return status

    def proxies(self) -> dict[str, int]:
        counts: dict[str, int] = self.status().get("dataplaneProxies") or {}
        return counts


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    setup = Backends(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


def test_counts_follow_connections_and_inbound_health(backends: Backends) -> None:
    everything = {"connected": 2, "healthy": 2, "total": 2}
    wait_for(lambda: backends.proxies() == everything, 60, what=f"dataplaneProxies {everything}")
    wait_for(lambda: backends.status().get("tls") == {"status": "Ready"}, 30, what="tls Ready")

    # the CLI shows the same status
    result = subprocess.run(
        [*ISTHMUS, "get", "meshservices", "--mesh", "default", "-o", "yaml"],
        env={**os.environ, "ISTHMUS_CP_ADDRESS": backends.cp.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = list(yaml.safe_load_all(result.stdout))
    docs = listed[0]["items"] if isinstance(listed[0], dict) and "items" in listed[0] else listed
    (shown,) = [d for d in docs if d["name"] == "backend"]
    assert shown["status"]["dataplaneProxies"] == everything
    assert shown["status"]["tls"] == {"status": "Ready"}

    # backend-1's application stops: its service probe fails, its inbound is NotReady: still connected
    backends.apps[0].stop()
    unhealthy = {"connected": 2, "healthy": 1, "total": 2}
    wait_for(lambda: backends.proxies() == unhealthy, 60, what=f"dataplaneProxies {unhealthy}")

    # backend-2's agent and Envoy die without deregistering: its Dataplane stays, its stream is gone
    proc = backends.sidecars[1].proc
    assert proc is not None
    proc.stop(signal.SIGKILL)
    disconnected = {"connected": 1, "healthy": 1, "total": 2}
    wait_for(lambda: backends.proxies() == disconnected, 60, what=f"dataplaneProxies {disconnected}")
    assert backends.status()["tls"] == {"status": "Ready"}  # Ready stays while mTLS is on (Kuma's rule)

    # the application comes back: healthy again
    backends.apps[0].start()
    back = {"connected": 1, "healthy": 2, "total": 2}
    wait_for(lambda: backends.proxies() == back, 60, what=f"dataplaneProxies {back}")
