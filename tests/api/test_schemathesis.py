"""Schemathesis against a real control plane (SQLite store): every operation of ``/openapi.json`` is called with
generated valid and invalid input, and every answer is checked against the document with all of Schemathesis's
checks: no 5xx, documented status codes, content types, headers (``Allow`` of a 405 too) and bodies, invalid
input refused, valid input accepted. Afterwards the process still answers.

The number of examples is bounded and generation is derandomised, so a run is reproducible and takes well under
three minutes on two cores.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.harness import ControlPlane

EXAMPLES_PER_OPERATION = 25

SEED = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 20001
    servicePort: 20002
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: 20010
    tags:
      kuma.io/service: backend
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 20003
    servicePort: 20004
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
---
type: MeshHTTPRoute
mesh: default
name: web-to-backend
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    rules:
    - matches:
      - path:
          type: PathPrefix
          value: /api
      default:
        backendRefs:
        - kind: MeshService
          name: backend
          weight: 1
"""

# The envelope of a resource document is declared (type, name, mesh, labels); the kind's specification is
# checked by the control plane, so a schema-valid body may still be refused with 400 naming the field. The same
# holds for explain's destination service (it must be one of the proxy's outbounds) and for token requests
# (durations, names and tag sets are checked by the handler).
CONFIG = f"""
suppress-health-check = ["too_slow", "filter_too_much", "data_too_large"]
request-timeout = 30

[generation]
max-examples = {EXAMPLES_PER_OPERATION}
deterministic = true
database = "none"

[phases.stateful]
enabled = false

[[operations]]
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-path-regex = "/_explain$|^/tokens/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"""

# The read operations on the seeded mesh, data plane and route, so that real documents are checked too. This run
# comes first: the run over every operation may delete what it finds (Schemathesis reuses names it has seen).
SEEDED = """
[parameters]
"path.mesh" = "default"
"path.name" = "web-1"
"query.to" = "backend"

[[operations]]
include-path-regex = "/_status$"
parameters = { "path.plural" = "meshhttproutes", "path.name" = "web-to-backend" }
"""


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("schemathesis"))  # SQLite store in the temporary directory
    try:
        plane.start()
        plane.apply(SEED)
        yield plane
    finally:
        plane.stop()
        plane.http.close()


def schemathesis_run(plane: ControlPlane, config: str, *args: str) -> None:
    """``schemathesis run --checks all`` of the control plane's ``/openapi.json`` against it; fails with the
    report."""
    config_file = plane.tmp / "schemathesis.toml"
    config_file.write_text(config)
    document = plane.tmp / "openapi.json"  # read as an admin: without valid credentials it is 401 too
    document.write_bytes(plane.http.get("/openapi.json").raise_for_status().content)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "run",
        str(document),
        "--url",
        plane.url,
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-color",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=plane.tmp)
    assert result.returncode == 0, (result.stdout + result.stderr)[-20000:]


def test_reads_of_existing_resources(control_plane: ControlPlane) -> None:
    schemathesis_run(
        control_plane,
        CONFIG + SEEDED,
        "--include-method",
        "GET",
        "--include-path-regex",
        r"^/meshes/\{mesh\}/",
    )


def test_every_operation(control_plane: ControlPlane) -> None:
    schemathesis_run(control_plane, CONFIG)


def test_every_operation_with_a_read_only_token(control_plane: ControlPlane) -> None:
    """A read-only user token: reads answer as before, every write and token operation 403."""
    request = {"name": "reader", "groups": ["mesh-system:readonly"], "validFor": "1h"}
    token = control_plane.http.post("/tokens/user", json=request)
    assert token.status_code == 200, token.text
    schemathesis_run(
        control_plane,
        CONFIG,
        "--max-examples",
        "5",
        "--header",
        f"Authorization: Bearer {token.text.strip()}",
    )


def test_every_operation_with_an_invalid_token(control_plane: ControlPlane) -> None:
    """A token that was never issued: 401 everywhere, even from loopback."""
    schemathesis_run(
        control_plane, CONFIG, "--max-examples", "3", "--header", "Authorization: Bearer not.a.token"
    )


def test_control_plane_still_answers(control_plane: ControlPlane) -> None:
    """After the runs (which may have deleted the seeded resources) the process is up and its store works."""
    assert control_plane.proc is not None and control_plane.proc.proc is not None
    assert control_plane.proc.proc.poll() is None, control_plane.proc.log()[-4000:]
    assert control_plane.http.get("/").json()["product"] == "Isthmus"
    mesh = {"type": "Mesh", "name": "after-schemathesis"}
    assert control_plane.http.put("/meshes/after-schemathesis", json=mesh).status_code == 201
    assert control_plane.http.get("/meshes/after-schemathesis").json()["name"] == "after-schemathesis"
