"""End to end: retries, outlier detection, health checks, fault injection, rate limits and ring-hash balancing
with real Envoys and real upstream servers.

One mesh (no initial policies, so each test controls exactly what applies) with three services behind web:
``solo`` (one instance), ``pair`` (two healthy instances) and ``broken`` (one healthy instance, one that answers
503 to everything but its health endpoint). Each test applies its policies and removes them when done.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import App, ControlPlane, Sidecar, wait_for
from tests.e2e.test_mesh_traffic import ALLOW_ALL, dataplane

pytestmark = pytest.mark.e2e

MESH = """
type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""


@dataclass
class Env:
    cp: ControlPlane
    outbound: dict[str, int]
    apps: dict[str, App]
    parts: list[object]
    client: httpx.Client

    def url(self, service: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.outbound[service]}{path}"

    def get(self, service: str, path: str = "/", **headers: str) -> httpx.Response:
        return self.client.get(self.url(service, path), headers=headers)

    def apply(self, text: str) -> list[str]:
        self.cp.apply(text)
        import yaml

        from isthmus.catalog import default_registry

        paths = []
        for doc in yaml.safe_load_all(text):
            rtype = default_registry().kind(doc["type"])
            assert rtype is not None
            paths.append(f"/meshes/default/{rtype.plural}/{doc['name']}")
        return paths

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            self.cp.delete(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("resilience")
    cp = ControlPlane(tmp).start()
    parts: list[object] = []
    apps: dict[str, App] = {}
    try:
        cp.apply(MESH)
        cp.apply(ALLOW_ALL)
        instances = [("solo-1", "solo", False), ("pair-1", "pair", False), ("pair-2", "pair", False),
                     ("broken-1", "broken", False), ("broken-2", "broken", True)]  # fmt: skip
        for name, service, fail_all in instances:
            app = App(tmp, service, instance=name, fail_all=fail_all).start()
            apps[name] = app
            parts.append(app)
            parts.append(Sidecar(tmp, cp, dataplane(name, service, free_port(), app.port)).start())
        outbound = {s: free_port() for s in ("solo", "pair", "broken")}
        web = Sidecar(
            tmp,
            cp,
            dataplane(
                "web-1", "web", free_port(), free_port(), outbounds=list((p, s) for s, p in outbound.items())
            ),
        ).start()
        parts.append(web)
        for port in outbound.values():
            web.wait_listener(f"outbound:127.0.0.1:{port}")
        client = httpx.Client(timeout=10)
        e = Env(cp, outbound, apps, parts, client)
        wait_for(lambda: e.get("solo").status_code == 200, 30, what="mesh traffic")
        wait_for(lambda: {e.get("pair").json()["instance"] for _ in range(10)} == {"pair-1", "pair-2"}, 30,
                 what="both pair instances")  # fmt: skip
        yield e
        client.close()
    finally:
        for part in reversed(parts):
            part.stop()  # type: ignore[attr-defined]
        cp.stop()


RETRY = """
type: MeshRetry
mesh: default
name: retry-solo
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: solo}
    default:
      http: {numRetries: 3, retryOn: [5xx]}
"""


def test_retry_turns_a_flaky_backend_into_successes(env: Env) -> None:
    without = collections.Counter(env.get("solo", "/flaky").status_code for _ in range(100))
    assert 35 <= without[503] <= 65, without  # every other request fails
    paths = env.apply(RETRY)
    try:
        wait_for(lambda: all(env.get("solo", "/flaky").status_code == 200 for _ in range(20)), 15,
                 what="retries in effect")  # fmt: skip
        with_retry = collections.Counter(env.get("solo", "/flaky").status_code for _ in range(400))
        assert with_retry[200] >= 396, with_retry  # >= 99%
    finally:
        env.remove(paths)


OUTLIER = """
type: MeshCircuitBreaker
mesh: default
name: eject-broken
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: broken}
    default:
      outlierDetection:
        interval: 1s
        baseEjectionTime: 30s
        maxEjectionPercent: 100
        detectors:
          totalFailures: {consecutive: 3}
"""


def test_outlier_detection_stops_sending_to_an_instance_that_only_fails(env: Env) -> None:
    before = collections.Counter(env.get("broken").status_code for _ in range(40))
    assert before[503] >= 10, before  # round robin: about half fail
    paths = env.apply(OUTLIER)
    try:

        def ejected() -> bool:
            for _ in range(20):  # feed the detector
                env.get("broken")
            time.sleep(1.2)  # one detection interval
            return all(env.get("broken").status_code == 200 for _ in range(20))

        wait_for(ejected, 20, interval=0.1, what="the failing instance ejected")
        answers = [env.get("broken") for _ in range(200)]
        ok = [r for r in answers if r.status_code == 200]
        assert len(ok) >= 190, collections.Counter(r.status_code for r in answers)
        assert {r.json()["instance"] for r in ok} == {"broken-1"}
    finally:
        env.remove(paths)


HEALTH = """
type: MeshHealthCheck
mesh: default
name: check-pair
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: pair}
    default:
      interval: 1s
      timeout: 1s
      unhealthyThreshold: 1
      healthyThreshold: 1
      http: {path: /health}
"""


def test_active_health_check_removes_an_instance_whose_health_fails(env: Env) -> None:
    paths = env.apply(HEALTH)
    failing = env.apps["pair-2"]
    try:
        time.sleep(2)  # let the checker see both healthy
        httpx.post(f"http://127.0.0.1:{failing.port}/admin/health/fail", timeout=5)
        wait_for(lambda: {env.get("pair").json()["instance"] for _ in range(20)} == {"pair-1"}, 10,
                 what="pair-2 taken out of rotation")  # fmt: skip
        seen = collections.Counter(env.get("pair").json()["instance"] for _ in range(100))
        assert seen == {"pair-1": 100}, seen
        httpx.post(f"http://127.0.0.1:{failing.port}/admin/health/ok", timeout=5)
        wait_for(lambda: {env.get("pair").json()["instance"] for _ in range(20)} == {"pair-1", "pair-2"}, 10,
                 what="pair-2 back after its health recovers")  # fmt: skip
    finally:
        httpx.post(f"http://127.0.0.1:{failing.port}/admin/health/ok", timeout=5)
        env.remove(paths)


FAULT = """
type: MeshFaultInjection
mesh: default
name: half-fail
spec:
  targetRef: {kind: MeshService, name: solo}
  from:
  - targetRef: {kind: Mesh}
    default:
      http:
      - abort: {httpStatus: 500, percentage: 50}
"""


def test_fault_injection_aborts_about_half(env: Env) -> None:
    paths = env.apply(FAULT)
    try:
        wait_for(
            lambda: any(env.get("solo").status_code == 500 for _ in range(20)), 15, what="faults in effect"
        )
        counts = collections.Counter(env.get("solo").status_code for _ in range(2000))
        assert counts[200] + counts[500] == 2000, counts
        assert 900 <= counts[500] <= 1100, counts  # 45% .. 55%
    finally:
        env.remove(paths)


LONG_CLIENT = "web-" + "x" * 76  # 80 characters: its identity is far beyond what a regex on it could hold
CLIENT_FAULTS = f"""
type: MeshFaultInjection
mesh: default
name: per-client
spec:
  targetRef: {{kind: MeshService, name: solo}}
  from:
  - targetRef: {{kind: MeshService, name: we}}
    default:
      http:
      - abort: {{httpStatus: 500, percentage: 100}}
  - targetRef: {{kind: MeshService, name: {LONG_CLIENT}}}
    default:
      http:
      - abort: {{httpStatus: 502, percentage: 100}}
  - targetRef: {{kind: MeshService, name: web}}
    default:
      http:
      - abort: {{httpStatus: 418, percentage: 100}}
"""


def test_fault_injection_for_one_client_only(env: Env) -> None:
    """Only web's own fault applies to web: not the one for ``we`` (a prefix of web's identity) nor the one for
    a long name; and Envoy accepts the inbound listener at all (it refused the old regex for a long name)."""
    paths = env.apply(CLIENT_FAULTS)
    try:
        wait_for(lambda: env.get("solo").status_code == 418, 15, what="web's fault in effect")
        counts = collections.Counter(env.get("solo").status_code for _ in range(50))
        assert counts == {418: 50}, counts
    finally:
        env.remove(paths)
        wait_for(lambda: env.get("solo").status_code == 200, 15, what="faults removed")


RATE_LIMIT = """
type: MeshRateLimit
mesh: default
name: five-per-interval
spec:
  targetRef: {kind: MeshService, name: solo}
  from:
  - targetRef: {kind: Mesh}
    default:
      local:
        http:
          requestRate: {num: 5, interval: 4s}
          onRateLimit: {status: 429, headers: {set: [{name: x-rate-limited, value: "yes"}]}}
"""


def test_rate_limit_answers_429_past_the_limit_and_recovers(env: Env) -> None:
    paths = env.apply(RATE_LIMIT)
    try:
        wait_for(
            lambda: any(env.get("solo").status_code == 429 for _ in range(10)), 15, what="limit in effect"
        )
        time.sleep(4.5)  # a fresh interval: the bucket is full again
        answers = [env.get("solo") for _ in range(8)]
        assert [r.status_code for r in answers[:5]] == [200] * 5
        limited = answers[5:]
        assert all(r.status_code == 429 for r in limited), [r.status_code for r in answers]
        assert all(r.headers.get("x-rate-limited") == "yes" for r in limited)
        time.sleep(4.5)
        assert env.get("solo").status_code == 200  # recovered after the interval
    finally:
        env.remove(paths)


RING_HASH = """
type: MeshLoadBalancingStrategy
mesh: default
name: sticky-pair
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: pair}
    default:
      loadBalancer:
        type: RingHash
        ringHash:
          hashPolicies:
          - type: Header
            header: {name: x-user}
"""


def test_ring_hash_keeps_a_user_on_one_instance(env: Env) -> None:
    paths = env.apply(RING_HASH)
    try:

        def sticky() -> bool:
            return len({env.get("pair", **{"x-user": "alice"}).json()["instance"] for _ in range(20)}) == 1

        wait_for(sticky, 15, what="ring hash in effect")
        alice = {env.get("pair", **{"x-user": "alice"}).json()["instance"] for _ in range(50)}
        assert len(alice) == 1, alice
        spread = {env.get("pair", **{"x-user": f"user-{i}"}).json()["instance"] for i in range(20)}
        assert spread == {"pair-1", "pair-2"}, spread
    finally:
        env.remove(paths)
