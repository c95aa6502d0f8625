"""Kuma's service probes with real Envoys: a Dataplane inbound with ``serviceProbe`` (kuma.io docs "Health",
Universal probes) is checked by its own proxy over the Health Discovery Service; the control plane writes the
result into the stored Dataplane (``state``, ``health.ready``) and other proxies stop (and resume) sending it
traffic. The control plane runs with data-plane tokens and TLS, as users run it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, running, wait_for

MESH = "type: Mesh\nname: default\n"


def dataplane(name: str, service: str, inbound_port: int, app_port: int, *, probe: bool = True) -> str:
    probe_yaml = (
        "\n    serviceProbe:\n      interval: 1s\n      timeout: 1s\n      healthyThreshold: 1"
        "\n      unhealthyThreshold: 1\n      tcp: {}"
        if probe
        else ""
    )
    return f"""
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound_port}
    servicePort: {app_port}{probe_yaml}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
"""


class Probed:
    """Two backend instances with service probes and a web proxy whose outbound balances over them."""

    def __init__(self, tmp: Path) -> None:
        self.cp = ControlPlane(tmp).start()
        self.cp.apply(MESH)
        self.apps = [App(tmp, "backend", instance=f"backend-{i}").start() for i in (1, 2)]
        self.inbounds = [free_port(), free_port()]
        self.backends = [
            Sidecar(
                tmp, self.cp, dataplane(f"backend-{i + 1}", "backend", self.inbounds[i], app.port)
            ).start()
            for i, app in enumerate(self.apps)
        ]
        self.outbound = free_port()
        web = dataplane("web-1", "web", free_port(), free_port(), probe=False)
        web += f"  outbound:\n  - port: {self.outbound}\n    tags:\n      kuma.io/service: backend\n"
        self.web = Sidecar(tmp, self.cp, web).start()
        self.web.wait_listener(f"outbound:127.0.0.1:{self.outbound}")

    def stop(self) -> None:
        self.web.stop()
        for sidecar in self.backends:
            sidecar.stop()
        for app in self.apps:
            app.stop()
        self.cp.stop()

    def inbound(self, name: str) -> dict[str, Any]:
        resp = self.cp.http.get(f"/meshes/default/dataplanes/{name}")
        resp.raise_for_status()
        inbound: dict[str, Any] = resp.json()["networking"]["inbound"][0]
        return inbound

    def ready(self, name: str) -> bool | None:
        inbound = self.inbound(name)
        health = inbound.get("health") or {}
        ready = health.get("ready")
        assert inbound.get("state") == {True: "Ready", False: "NotReady", None: None}[ready], inbound
        return ready  # type: ignore[no-any-return]

    def endpoints(self) -> set[int]:
        """Ports of the hosts the web proxy's Envoy has for backend (its admin API, not the control plane)."""
        body = httpx.get(f"{self.web.admin}/clusters?format=json", timeout=3).json()
        ports: set[int] = set()
        for cluster in body.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                port = host["address"]["socket_address"]["port_value"]
                if port in self.inbounds:
                    ports.add(port)
        return ports

    def instances(self, count: int = 20) -> set[str]:
        seen = set()
        for _ in range(count):
            resp = httpx.get(f"http://127.0.0.1:{self.outbound}/", timeout=5)
            assert resp.status_code == 200, resp.text
            seen.add(resp.json()["instance"])
        return seen


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[Probed]:
    mesh = Probed(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop()


def test_probed_inbound_health_follows_its_application(probed: Probed) -> None:
    first, second = probed.inbounds
    # both applications are up: the control plane records them ready, and web balances over both
    wait_for(lambda: probed.ready("backend-1") is True, 30, what="backend-1 health.ready true")
    wait_for(lambda: probed.ready("backend-2") is True, 30, what="backend-2 health.ready true")
    wait_for(lambda: probed.endpoints() == {first, second}, 30, what="both backends in web's Envoy")
    wait_for(lambda: probed.instances() == {"backend-1", "backend-2"}, 30, what="traffic to both backends")

    # backend-1's application stops: its inbound becomes NotReady and leaves web's endpoints
    probed.apps[0].stop()
    wait_for(lambda: probed.ready("backend-1") is False, 30, what="backend-1 health.ready false")
    assert probed.ready("backend-2") is True
    wait_for(lambda: probed.endpoints() == {second}, 30, what="backend-1 gone from web's Envoy")
    assert probed.instances() == {"backend-2"}  # every request succeeds, on the instance still serving

    # the application comes back: ready again, an endpoint again
    probed.apps[0].start()
    wait_for(lambda: probed.ready("backend-1") is True, 30, what="backend-1 health.ready true again")
    wait_for(lambda: probed.endpoints() == {first, second}, 30, what="backend-1 back in web's Envoy")
    wait_for(lambda: probed.instances() == {"backend-1", "backend-2"}, 30, what="traffic to both again")


def test_a_dataplane_without_probes_is_left_alone(probed: Probed, tmp_path: Path) -> None:
    app = App(tmp_path, "backend", instance="backend-3").start()
    inbound = free_port()
    third = Sidecar(tmp_path, probed.cp, dataplane("backend-3", "backend", inbound, app.port, probe=False))
    probed.inbounds.append(inbound)
    with running(app, third.start()):
        wait_for(lambda: inbound in probed.endpoints(), 30, what="backend-3 in web's Envoy")
        wait_for(lambda: probed.ready("backend-1") is True, 30, what="backend-1 health.ready true")
        app.stop()  # nobody probes it: it stays an endpoint, and its stored inbound is unchanged
        probed.apps[0].stop()  # a probe result that comes in after it
        wait_for(lambda: probed.ready("backend-1") is False, 30, what="backend-1 health.ready false")
        assert "health" not in probed.inbound("backend-3") and "state" not in probed.inbound("backend-3")
        assert inbound in probed.endpoints()
