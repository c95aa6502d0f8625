"""End to end: the control plane restarts and churns under continuous traffic, and stored data cannot stop it.

Traffic goes through a real Envoy sidecar (web's outbound) to a real Envoy sidecar (backend's inbound, mTLS) and
a real upstream. Every request must succeed: a control-plane restart, or a policy change every 20 ms, must not
fail a single one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from isthmus.store.base import Op, OpKind
from isthmus.store.sql import SqlStore
from tests.e2e.harness import ControlPlane, wait_for
from tests.e2e.test_mesh_traffic import ALLOW_ALL, Mesh

pytestmark = pytest.mark.e2e

MIN_REQUESTS = 10_000


_TRAFFIC = r"""
import json, sys, threading, time
import httpx

url, threads = sys.argv[1], int(sys.argv[2])
ok, failed, lock, stop = [0], [], threading.Lock(), threading.Event()

def run():
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.get(url)
                problem = "" if r.status_code == 200 else f"status {r.status_code}: {r.text[:100]}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            with lock:
                if problem:
                    failed.append(problem)
                else:
                    ok[0] += 1

def report(final):
    with lock:
        print(json.dumps({"ok": ok[0], "failed": failed[:20], "failures": len(failed), "final": final}), flush=True)

workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
for w in workers:
    w.start()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
while not stop.wait(0.2):
    report(False)
for w in workers:
    w.join(15)
report(True)
"""


class Traffic:
    """Requests without pause from several threads of another process (keep-alive connections), so that the
    test's own work (applying policies) does not compete with it for the GIL; counts successes and failures."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TRAFFIC, url, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ok = 0
        self.failures = 0
        self.failed: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            report = json.loads(line)
            self.ok, self.failures, self.failed = report["ok"], report["failures"], report["failed"]

    def wait_requests(self, count: int, timeout: float = 300.0) -> None:
        wait_for(lambda: self.ok >= count, timeout, interval=0.2, what=f"{count} successful requests")

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(30)
        self._reader.join(10)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        m.cp.apply(ALLOW_ALL)
        wait_for(lambda: httpx.get(m.url, timeout=5).status_code == 200, 20, what="mesh traffic")
        yield m
    finally:
        m.stop()


def test_control_plane_restart_fails_no_request(mesh: Mesh) -> None:
    with Traffic(mesh.url) as traffic:
        traffic.wait_requests(1_000)
        mesh.cp.stop()
        during = traffic.ok
        time.sleep(2)  # Envoys serve on their last configuration while the control plane is away
        mesh.cp.start()
        # the new control plane issued new certificates: wait until both proxies have ACKed their config
        for name in ("web-1", "backend-1"):
            wait_for(
                partial(_acked_everything, mesh.cp, name), 30, what=f"{name} ACKed its new configuration"
            )
        traffic.wait_requests(max(MIN_REQUESTS, traffic.ok + 2_000))
    assert traffic.failures == 0, traffic.failed
    assert traffic.ok >= MIN_REQUESTS
    assert traffic.ok > during  # traffic went on through the restart


def _acked_everything(cp: ControlPlane, name: str) -> bool:
    """Online, and has ACKed every type the new control plane sent it."""
    insight = cp.insight("default", name)
    sent, acked = insight["lastSent"], insight["lastAck"]
    return bool(insight["online"] and sent) and all(acked.get(t) == v for t, v in sent.items())


RETRY = """
type: MeshRetry
mesh: default
name: churn-retry
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    default:
      http:
        numRetries: {retries}
"""

TIMEOUT = """
type: MeshTimeout
mesh: default
name: churn-timeout
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    default:
      http:
        requestTimeout: {seconds}s
"""


def test_fifty_policy_changes_a_second_fail_no_request(mesh: Mesh) -> None:
    rate, seconds = 50, 30
    bodies = [
        ("/meshes/default/meshretries/churn-retry", yaml.safe_load(RETRY.format(retries=2))),
        ("/meshes/default/meshtimeouts/churn-timeout", yaml.safe_load(TIMEOUT.format(seconds=10))),
        ("/meshes/default/meshretries/churn-retry", yaml.safe_load(RETRY.format(retries=3))),
        ("/meshes/default/meshtimeouts/churn-timeout", yaml.safe_load(TIMEOUT.format(seconds=11))),
    ]
    changes = 0
    with Traffic(mesh.url) as traffic, httpx.Client(base_url=mesh.cp.url, timeout=10) as api:
        traffic.wait_requests(500)
        start = time.monotonic()
        for i in range(rate * seconds):
            path, body = bodies[i % len(bodies)]
            resp = api.put(path, json=body)
            assert resp.status_code in (200, 201), resp.text
            changes += 1
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - start
        traffic.wait_requests(MIN_REQUESTS)
    assert changes == rate * seconds
    assert traffic.failures == 0, traffic.failed
    assert traffic.ok >= MIN_REQUESTS
    config = mesh.cp.http.get("/meshes/default/dataplanes/web-1/_config").json()
    assert config["error"] is None
    print(f"{changes} policy changes in {elapsed:.1f}s, {traffic.ok} requests, none failed")


# --- stored data cannot stop the control plane ------------------------------------------------------------------
GOOD_MESH = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
BROKEN_MESH = {
    "mtls": {
        "enabledBackend": "ca-1",
        "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "9000y"}}}],
    }
}


def _dataplane(service: str, port: int, **tags: str) -> dict[str, object]:
    return {
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": port, "servicePort": port + 1, "tags": {"kuma.io/service": service, **tags}}
            ],
        }
    }


async def _write_records(path: Path) -> None:
    """Records as an older version (with laxer validation) would have stored them."""
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        await store.write(
            [
                Op(OpKind.CREATE, "Mesh", "", "good", spec=GOOD_MESH),
                Op(OpKind.CREATE, "Dataplane", "good", "web-1", spec=_dataplane("web", 20001)),
                Op(
                    OpKind.CREATE,
                    "Dataplane",
                    "good",
                    "owner",
                    spec=_dataplane("web", 20003, owner="John Smith"),
                ),
                Op(OpKind.CREATE, "Mesh", "", "broken", spec=BROKEN_MESH),
                Op(OpKind.CREATE, "Dataplane", "broken", "web-1", spec=_dataplane("web", 20005)),
            ]
        )
    finally:
        await store.close()


def test_bad_stored_records_cannot_stop_the_control_plane(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    asyncio.run(_write_records(db))
    cp = ControlPlane(tmp_path, store=f"sqlite:{db}")
    try:
        cp.start()  # the API answers: the process started
        good = wait_for(
            lambda: (c := cp.http.get("/meshes/good/dataplanes/web-1/_config").json())["versions"] and c,
            20,
            what="configuration of good/web-1",
        )
        assert good["error"] is None
        owner = cp.insight("good", "owner")
        assert "John Smith" in owner["configError"]
        broken = cp.insight("broken", "web-1")
        assert "9000y" in broken["configError"] and "broken" in broken["configError"]
        metrics = cp.http.get("/metrics").text
        assert 'isthmus_generation_errors_total{mesh="broken",stage="load"}' in metrics
        assert "isthmus_meshes_in_error 1.0" in metrics
        # the bad records can be removed with the API
        cp.delete("/meshes/good/dataplanes/owner")
        cp.delete("/meshes/broken/dataplanes/web-1")
        cp.delete("/meshes/broken")
        wait_for(
            lambda: "isthmus_meshes_in_error 0.0" in cp.http.get("/metrics").text, 10, what="mesh errors gone"
        )
        assert cp.proc is not None and cp.proc.proc is not None and cp.proc.proc.poll() is None
    except AssertionError:
        print(cp.proc.log() if cp.proc else "")
        raise
    finally:
        cp.stop()
