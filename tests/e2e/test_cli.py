"""The resource CLI (``isthmus apply | get | delete | inspect``) against a real control plane process.

The first part needs no control plane: renderers, the REST client on a mock transport, local validation and
CLI errors. The second part drives the CLI against ``isthmus cp run --store memory`` (the ``control_plane``
fixture of ``tests/e2e/conftest.py``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from isthmus.cli import client as client_module
from isthmus.cli import output
from isthmus.cli.client import CliError, CpClient, normalize_address
from isthmus.cli.main import app
from tests.conftest import free_port

runner = CliRunner()


def cli(args: list[str], url: str | None = None, stdin: str | None = None) -> Result:
    env = {"ISTHMUS_CP_ADDRESS": url} if url else {}
    return runner.invoke(app, args, input=stdin, env=env, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def one_line_error(result: Result, *fragments: str) -> str:
    """Exit code 1 and exactly one line on stderr, starting with ``Error:`` and holding every fragment."""
    assert result.exit_code == 1, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a rendered table (cells contain no spaces in these tests)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].split(), [line.split() for line in lines[1:]]


def unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}"


def resources_yaml(mesh: str, port: int = 10001) -> str:
    return f"""
type: Mesh
name: {mesh}
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: Dataplane
mesh: {mesh}
name: web
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: 20001
    tags:
      kuma.io/service: backend
---
type: MeshTrafficPermission
mesh: {mesh}
name: allow-web
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Allow
"""


def dataplane_yaml(name: str, mesh: str | None = "m-bad", port: Any = 10001, extra_inbound: str = "") -> str:
    mesh_line = f"mesh: {mesh}\n" if mesh is not None else ""
    return (
        f"type: Dataplane\n{mesh_line}name: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
        f"  - port: {port}\n    tags:\n      kuma.io/service: web\n{extra_inbound}"
    )


DUPLICATE_INBOUND = "  - port: 10001\n    tags:\n      kuma.io/service: other\n"
BAD_ACTION = """type: MeshTrafficPermission
mesh: m-bad
name: bad-action
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Maybe
"""

# (id, input, fragments of the one-line error)
BAD_INPUTS = [
    ("malformed-yaml", "type: Dataplane\nname: [oops\n", ["malformed YAML at line"]),
    ("unknown-kind", "type: Foo\nname: foo\n", ["type: unknown kind 'Foo'"]),
    ("missing-mesh", dataplane_yaml("no-mesh", mesh=None), ["mesh: is required"]),
    (
        "port-out-of-range",
        dataplane_yaml("big-port", port=70000),
        ["networking.inbound[0].port: Input should be less than or equal to 65535"],
    ),
    (
        "duplicate-inbound-port",
        dataplane_yaml("dup-port", extra_inbound=DUPLICATE_INBOUND),
        ["networking.inbound[1].port: port 10001 is already used by inbound[0]"],
    ),
    ("invalid-action", BAD_ACTION, ["spec.from[0].default.action: Input should be 'Allow'"]),
    (
        "second-document-invalid",
        dataplane_yaml("first-ok") + "---\n" + dataplane_yaml("second-bad", port=0),
        ['document 2 (Dataplane "second-bad"): networking.inbound[0].port: Input should be greater than'],
    ),
]


# ==== no control plane needed =====================================================================================
NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (ago(seconds=5), "5s"),
        (ago(seconds=119), "119s"),
        (ago(minutes=2), "2m"),
        (ago(hours=3, minutes=59), "3h"),
        (ago(days=3), "3d"),
        (ago(days=800), "2y"),
        (ago(seconds=-30), "0s"),
        (None, "-"),
        ("yesterday", "-"),
    ],
)
def test_age(created: str | None, expected: str) -> None:
    assert output.age(created, NOW) == expected


def test_table_columns_are_aligned_without_trailing_space() -> None:
    text = output.render_table(
        output.MESH_HEADERS, [["default", "off", "5s"], ["a-much-longer-mesh-name", "builtin/ca-1", "3d"]]
    )
    lines = text.splitlines()
    assert len(lines) == 3
    assert all(line == line.rstrip() for line in lines)
    col2 = lines[0].index("mTLS")
    col3 = lines[0].index("AGE")
    assert lines[1][col2:].startswith("off") and lines[2][col2:].startswith("builtin/ca-1")
    assert lines[1][col3:] == "5s" and lines[2][col3:] == "3d"
    assert lines[2][col2 - 3 : col2] == "   "  # at least three spaces between columns


def test_table_with_no_rows_prints_the_header() -> None:
    assert output.render_table(output.POLICY_HEADERS, []).split() == list(output.POLICY_HEADERS)


def test_row_builders() -> None:
    mesh_on = {
        "name": "m",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
    }
    assert output.mesh_rows([mesh_on, {"name": "n", "creationTime": ago(seconds=7)}], NOW) == [
        ["m", "builtin/ca-1", "-"],
        ["n", "off", "7s"],
    ]
    overview = {
        "mesh": "default",
        "name": "web-1",
        "creationTime": ago(minutes=5),
        "dataplane": {
            "networking": {
                "address": "10.0.0.1",
                "inbound": [
                    {"port": 1, "tags": {"kuma.io/service": "web"}},
                    {"port": 2, "tags": {"kuma.io/service": "admin"}},
                    {"port": 3, "tags": {"kuma.io/service": "web"}},
                ],
            }
        },
        "dataplaneInsight": {"online": True},
    }
    offline = {**overview, "name": "web-2", "dataplaneInsight": {"online": False}}
    assert output.overview_rows([overview, offline], NOW) == [
        ["default", "web-1", "10.0.0.1", "web,admin", "Online", "5m"],
        ["default", "web-2", "10.0.0.1", "web,admin", "Offline", "5m"],
    ]
    policies = [
        {"mesh": "default", "name": "p1", "spec": {"from": []}},
        {"mesh": "default", "name": "p2", "spec": {"targetRef": {"kind": "MeshService", "name": "web"}}},
        {"mesh": "default", "name": "p3", "spec": {"targetRef": {"kind": "MeshSubset", "tags": {"v": "1"}}}},
    ]
    assert [row[2] for row in output.policy_rows(policies, NOW)] == [
        "Mesh",
        "MeshService:web",
        "MeshSubset[v=1]",
    ]


def test_yaml_and_json_keep_document_order() -> None:
    doc = {"type": "Mesh", "name": "default", "creationTime": "t"}
    assert output.render(doc, "yaml").splitlines() == ["type: Mesh", "name: default", "creationTime: t"]
    assert list(json.loads(output.render(doc, "json"))) == ["type", "name", "creationTime"]


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> CpClient:
    return CpClient("http://cp.test", transport=httpx.MockTransport(handler))


def test_client_turns_http_errors_into_one_line() -> None:
    bodies: dict[str, httpx.Response] = {
        "/fields": httpx.Response(
            400,
            json={
                "title": "Resource is not valid",
                "status": 400,
                "detail": "x",
                "invalid_parameters": [
                    {
                        "field": "networking.inbound[0].port",
                        "reason": "Input should be less than or equal to 65535",
                    },
                    {"field": "mesh", "reason": "is required"},
                ],
            },
        ),
        "/missing": httpx.Response(
            404,
            json={
                "title": "Not found",
                "status": 404,
                "detail": "Dataplane 'web' in mesh 'default' not found",
            },
        ),
        "/proxy": httpx.Response(502, text="<html>\n<body>Bad\ngateway</body>\n</html>"),
    }
    client = mock_client(lambda request: bodies[request.url.path])
    expected = {
        "/fields": "networking.inbound[0].port: Input should be less than or equal to 65535; mesh: is required",
        "/missing": "Dataplane 'web' in mesh 'default' not found",
        "/proxy": "the control plane answered HTTP 502 Bad Gateway: <html> <body>Bad gateway</body> </html>",
    }
    for path, message in expected.items():
        with pytest.raises(CliError) as info:
            client.get_json(path)
        assert info.value.message == message
        assert info.value.status == bodies[path].status_code


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ConnectTimeout("timed out while connecting"), "timed out"),
        (httpx.ReadError("Server disconnected"), "server disconnected"),
    ],
)
def test_client_turns_transport_errors_into_one_line(exc: httpx.TransportError, reason: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(CliError) as info:
        mock_client(fail).index()
    assert info.value.message == f"cannot reach the control plane at http://cp.test: {reason}"
    assert info.value.status is None


def test_client_follows_next_links_relative_and_absolute() -> None:
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        offset = int(request.url.params.get("offset", "0"))
        nxt = {
            0: "/meshes/default/dataplanes?offset=2&size=2",
            2: "http://cp.test/meshes/default/dataplanes?offset=4&size=2",
            4: None,
        }[offset]
        items = [{"name": f"dp-{i}"} for i in range(offset, min(offset + 2, 5))]
        return httpx.Response(200, json={"total": 5, "items": items, "next": nxt})

    names = [
        item["name"] for item in mock_client(handler).paginate("/meshes/default/dataplanes", page_size=2)
    ]
    assert names == [f"dp-{i}" for i in range(5)]
    assert requests[0] == "http://cp.test/meshes/default/dataplanes?offset=0&size=2"
    assert len(requests) == 3


def test_client_stops_on_a_next_link_that_repeats() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            200, json={"total": 9, "items": [{"name": "x"}], "next": "/meshes?offset=1&size=1"}
        )

    assert len(list(mock_client(handler).paginate("/meshes"))) == 2
    assert calls == 2


def test_address_normalization() -> None:
    assert normalize_address("127.0.0.1:5681") == "http://127.0.0.1:5681"
    assert normalize_address("https://cp.example:443/") == "https://cp.example:443"
    with pytest.raises(CliError, match="scheme"):
        normalize_address("ftp://cp.example")


@pytest.mark.parametrize(
    ("text", "fragments"), [(c[1], c[2]) for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_before_anything_is_sent(text: str, fragments: list[str]) -> None:
    # the address answers nothing: a field error (not "cannot reach") proves validation happens locally first
    result = cli(["apply", "-f", "-"], unreachable(), stdin=text)
    line = one_line_error(result, *fragments)
    assert "cannot reach" not in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["get", "foo"],
            ['Error: unknown kind "foo"; known kinds: meshes, dataplanes, meshtrafficpermissions'],
        ),
        (
            ["delete", "foo", "x"],
            ['unknown kind "foo"; known kinds: meshes, dataplanes, meshtrafficpermissions'],
        ),
        (["get", "secrets"], ['unknown kind "secrets"']),  # kept in the store, never served
        (["inspect", "foo", "x"], ['unknown kind "foo"']),
        (
            ["inspect", "mesh", "default"],
            ['inspect supports dataplanes, zoneingresses and zoneegresses, not "mesh"'],
        ),
        (
            ["inspect", "dp", "web", "--config", "--policies"],
            ["--config and --policies cannot be used together"],
        ),
        (["inspect", "dp", "web", "-o", "table"], ['--output "table": expected one of yaml, json']),
        (["get", "meshes", "-o", "xml"], ['--output "xml": expected one of table, yaml, json']),
        (["apply", "-f", "-", "--var", "novalue"], ['--var "novalue": expected KEY=VALUE']),
        (
            ["apply", "-f", "/nonexistent/resources.yaml"],
            ["cannot read /nonexistent/resources.yaml: No such file"],
        ),
    ],
)
def test_cli_errors_without_a_control_plane(args: list[str], fragments: list[str]) -> None:
    one_line_error(cli(args, unreachable(), stdin=""), *fragments)


def test_apply_of_nothing_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n# nothing\n")
    one_line_error(cli(["apply", "-f", str(empty)], unreachable()), f"no resources found in {empty}")


def test_dry_run_substitutes_variables_and_sends_nothing() -> None:
    text = dataplane_yaml("{{ name }}", port="{{port}}").replace("127.0.0.1", "'{{ addr }}'")
    out = ok(
        cli(
            [
                "apply",
                "-f",
                "-",
                "--dry-run",
                "--var",
                "name=web-9",
                "--var",
                "port=8080",
                "--var",
                "addr=10.0.0.9",
            ],
            unreachable(),
            stdin=text,
        )
    )
    [doc] = list(yaml.safe_load_all(out))
    assert doc["name"] == "web-9"
    assert doc["networking"]["address"] == "10.0.0.9"
    assert doc["networking"]["inbound"][0]["port"] == 8080


def test_missing_variable_names_the_placeholder() -> None:
    text = dataplane_yaml("web", port="{{ port }}")
    one_line_error(
        cli(["apply", "-f", "-", "--dry-run"], unreachable(), stdin=text),
        "placeholder {{ port }} at line 7 has no value; pass --var port=VALUE",
    )


def test_unreachable_control_plane_is_one_line() -> None:
    url = unreachable()
    expected = f"Error: cannot reach the control plane at {url}: connection refused"
    assert one_line_error(cli(["get", "meshes"], url)) == expected
    assert one_line_error(cli(["apply", "-f", "-"], url, stdin=resources_yaml("m"))) == expected
    assert one_line_error(cli(["inspect", "dataplane", "web", "--cp-address", url])) == expected


def test_unreachable_control_plane_through_the_console_command() -> None:
    url = unreachable()
    proc = subprocess.run(
        [sys.executable, "-m", "isthmus.cli", "delete", "dataplane", "web", "--cp-address", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"Error: cannot reach the control plane at {url}: connection refused\n"


# ==== against a real control plane ================================================================================
def api_get(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=10)


def seed(url: str, mesh: str) -> None:
    ok(cli(["apply", "-f", "-"], url, stdin=resources_yaml(mesh)))


def listed(url: str, kind: str, mesh: str = "default") -> list[str]:
    data = json.loads(ok(cli(["get", kind, "--mesh", mesh, "-o", "json"], url)))
    assert data["total"] == len(data["items"])
    return [item["name"] for item in data["items"]]


def test_apply_from_a_file_creates_then_updates(control_plane: str, tmp_path: Path) -> None:
    file = tmp_path / "resources.yaml"
    file.write_text(resources_yaml("m-file"))
    out = ok(cli(["apply", "-f", str(file)], control_plane))
    assert out.splitlines() == [
        'Mesh "m-file" created',
        'Dataplane "web" created',
        'MeshTrafficPermission "allow-web" created',
    ]
    file.write_text(resources_yaml("m-file", port=10002))
    out = ok(cli(["apply", "--file", str(file)], control_plane))
    assert out.splitlines() == [
        'Mesh "m-file" updated',
        'Dataplane "web" updated',
        'MeshTrafficPermission "allow-web" updated',
    ]
    stored = api_get(control_plane, "/meshes/m-file/dataplanes/web").json()
    assert stored["networking"]["inbound"][0]["port"] == 10002


def test_apply_from_stdin_yaml_and_json(control_plane: str) -> None:
    out = ok(cli(["apply", "-f", "-"], control_plane, stdin="type: Mesh\nname: m-stdin\n"))
    assert out == 'Mesh "m-stdin" created\n'
    doc = {
        "type": "Dataplane",
        "mesh": "m-stdin",
        "name": "from-json",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 7000, "tags": {"kuma.io/service": "j"}}]},
    }
    out = ok(cli(["apply", "-f", "-"], control_plane, stdin=json.dumps(doc)))
    assert out == 'Dataplane "from-json" created\n'
    stored = api_get(control_plane, "/meshes/m-stdin/dataplanes/from-json").json()
    assert stored["networking"]["inbound"] == [{"port": 7000, "tags": {"kuma.io/service": "j"}}]


def test_apply_puts_meshes_first_and_substitutes_variables(control_plane: str) -> None:
    text = (
        dataplane_yaml("late", mesh="{{ mesh }}", port="{{ port }}") + "---\ntype: Mesh\nname: '{{ mesh }}'\n"
    )
    out = ok(
        cli(["apply", "-f", "-", "--var", "mesh=m-vars", "--var", "port=9100"], control_plane, stdin=text)
    )
    assert out.splitlines() == ['Mesh "m-vars" created', 'Dataplane "late" created']
    assert (
        api_get(control_plane, "/meshes/m-vars/dataplanes/late").json()["networking"]["inbound"][0]["port"]
        == 9100
    )


def test_dry_run_stores_nothing(control_plane: str) -> None:
    out = ok(cli(["apply", "-f", "-", "--dry-run"], control_plane, stdin=resources_yaml("m-dry")))
    assert [d["type"] for d in yaml.safe_load_all(out)] == ["Mesh", "Dataplane", "MeshTrafficPermission"]
    assert "m-dry" not in listed(control_plane, "meshes")


def test_get_lists_in_all_three_formats(control_plane: str) -> None:
    seed(control_plane, "m-get")

    headers, rows = table(ok(cli(["get", "meshes"], control_plane)))
    assert headers == ["NAME", "mTLS", "AGE"]
    [row] = [r for r in rows if r[0] == "m-get"]
    assert row[1] == "builtin/ca-1" and re.fullmatch(r"\d+s", row[2])

    headers, rows = table(ok(cli(["get", "dataplanes", "--mesh", "m-get"], control_plane)))
    assert headers == ["MESH", "NAME", "ADDRESS", "SERVICES", "STATUS", "AGE"]
    assert [r[:5] for r in rows] == [["m-get", "web", "127.0.0.1", "web", "Offline"]]
    assert re.fullmatch(r"\d+s", rows[0][5])

    headers, rows = table(ok(cli(["get", "meshtrafficpermissions", "-m", "m-get"], control_plane)))
    assert headers == ["MESH", "NAME", "TARGETREF", "AGE"]
    assert [r[:3] for r in rows] == [["m-get", "allow-web", "MeshService:web"]]

    as_yaml = yaml.safe_load(ok(cli(["get", "dataplanes", "--mesh", "m-get", "-o", "yaml"], control_plane)))
    assert as_yaml["total"] == 1 and as_yaml["next"] is None
    [dp] = as_yaml["items"]
    assert dp["type"] == "Dataplane" and dp["mesh"] == "m-get" and dp["creationTime"]
    assert dp["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "web"

    as_json = json.loads(ok(cli(["get", "mtp", "--mesh", "m-get", "--output", "json"], control_plane)))
    assert [p["spec"]["from"][0]["default"]["action"] for p in as_json["items"]] == ["Allow"]
    assert "m-get" in listed(control_plane, "mesh")


def test_get_one_in_all_three_formats_and_reapply_it(control_plane: str) -> None:
    seed(control_plane, "m-one")
    headers, rows = table(ok(cli(["get", "dataplane", "web", "--mesh", "m-one"], control_plane)))
    assert headers == list(output.DATAPLANE_HEADERS)
    assert len(rows) == 1 and rows[0][:2] == ["m-one", "web"]
    _, rows = table(ok(cli(["get", "mesh", "m-one"], control_plane)))
    assert rows == [["m-one", "builtin/ca-1", rows[0][2]]]

    as_json = json.loads(ok(cli(["get", "Dataplane", "web", "--mesh", "m-one", "-o", "json"], control_plane)))
    assert as_json["name"] == "web" and as_json["networking"]["address"] == "127.0.0.1"
    as_yaml = ok(
        cli(["get", "meshtrafficpermission", "allow-web", "--mesh", "m-one", "-o", "yaml"], control_plane)
    )
    assert yaml.safe_load(as_yaml)["spec"]["targetRef"] == {"kind": "MeshService", "name": "web"}

    # what `get -o yaml|json` prints is valid input for `apply`
    assert (
        ok(cli(["apply", "-f", "-"], control_plane, stdin=as_yaml))
        == 'MeshTrafficPermission "allow-web" updated\n'
    )
    assert (
        ok(cli(["apply", "-f", "-"], control_plane, stdin=json.dumps(as_json))) == 'Dataplane "web" updated\n'
    )


def test_get_a_missing_resource(control_plane: str) -> None:
    for fmt in ("table", "yaml"):
        one_line_error(
            cli(["get", "dataplane", "nope", "--mesh", "default", "-o", fmt], control_plane),
            "Dataplane 'nope' in mesh 'default' not found",
        )


def test_get_follows_pagination(control_plane: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = ["type: Mesh\nname: m-page\n"] + [dataplane_yaml(f"dp-{i}", "m-page", 10000 + i) for i in range(5)]
    ok(cli(["apply", "-f", "-"], control_plane, stdin="---\n".join(docs)))
    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
    assert sorted(listed(control_plane, "dataplanes", "m-page")) == [f"dp-{i}" for i in range(5)]
    _, rows = table(ok(cli(["get", "dataplanes", "--mesh", "m-page"], control_plane)))
    assert sorted(r[1] for r in rows) == [f"dp-{i}" for i in range(5)]


@pytest.fixture(scope="module")
def bad_mesh(control_plane: str) -> str:
    ok(cli(["apply", "-f", "-"], control_plane, stdin="type: Mesh\nname: m-bad\n"))
    return "m-bad"


@pytest.mark.parametrize(
    ("text", "fragments"), [(c[1], c[2]) for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_exits_1_and_stores_nothing(
    control_plane: str, bad_mesh: str, tmp_path: Path, text: str, fragments: list[str]
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    meshes_before = listed(control_plane, "meshes")
    result = cli(["apply", "-f", str(file)], control_plane)
    one_line_error(result, *fragments)
    assert result.stdout == ""
    assert listed(control_plane, "dataplanes", bad_mesh) == []
    assert listed(control_plane, "meshtrafficpermissions", bad_mesh) == []
    assert listed(control_plane, "dataplanes", "default") == []
    assert listed(control_plane, "meshes") == meshes_before


def test_refusal_by_the_control_plane_is_one_line(control_plane: str) -> None:
    one_line_error(
        cli(["apply", "-f", "-"], control_plane, stdin=dataplane_yaml("orphan", mesh="no-such-mesh")),
        "Error: mesh: mesh 'no-such-mesh' does not exist",
    )
    text = "type: Mesh\nname: m-partial\n---\n" + dataplane_yaml("orphan", mesh="no-such-mesh")
    result = cli(["apply", "-f", "-"], control_plane, stdin=text)
    one_line_error(result, "Error: Dataplane \"orphan\": mesh: mesh 'no-such-mesh' does not exist")
    assert result.stdout == 'Mesh "m-partial" created\n'  # what was applied before the refusal is reported
    assert api_get(control_plane, "/meshes/no-such-mesh/dataplanes/orphan").status_code == 404


def test_delete(control_plane: str) -> None:
    seed(control_plane, "m-del")
    assert (
        ok(cli(["delete", "dataplane", "web", "--mesh", "m-del"], control_plane))
        == 'Dataplane "web" deleted\n'
    )
    assert listed(control_plane, "dataplanes", "m-del") == []
    assert listed(control_plane, "meshtrafficpermissions", "m-del") == ["allow-web"]
    one_line_error(
        cli(["delete", "dataplanes", "web", "--mesh", "m-del"], control_plane),
        "Error: Dataplane 'web' in mesh 'm-del' not found",
    )
    out = ok(cli(["delete", "mtp", "allow-web", "-m", "m-del"], control_plane))
    assert out == 'MeshTrafficPermission "allow-web" deleted\n'
    assert ok(cli(["delete", "meshes", "m-del"], control_plane)) == 'Mesh "m-del" deleted\n'
    assert "m-del" not in listed(control_plane, "meshes")


def test_inspect_dataplane(control_plane: str) -> None:
    seed(control_plane, "m-insp")
    base = ["inspect", "dataplane", "web", "--mesh", "m-insp"]

    summary = ok(cli(base, control_plane))
    assert summary.startswith('Dataplane "web" in mesh "m-insp"\n')
    assert re.search(r"^  Status: +Offline \(never connected\)$", summary, re.M)
    assert re.search(r"^  Inbounds: +127\.0\.0\.1:10001 -> web$", summary, re.M)
    assert re.search(r"^  Outbounds: +127\.0\.0\.1:20001 -> backend$", summary, re.M)
    assert "\nPolicies\n  inbound 127.0.0.1:10001 (service web)\n" in summary
    assert '    MeshTrafficPermission "allow-web"\n      from Mesh: Allow\n' in summary

    both = yaml.safe_load(ok(cli([*base, "-o", "yaml"], control_plane)))
    assert both["insight"]["name"] == "web"
    assert both["insight"]["dataplaneInsight"]["online"] is False
    inbound_policies = both["policies"]["inbounds"][0]["policies"]
    assert inbound_policies[0] == {"type": "MeshTrafficPermission", "name": "allow-web"}
    # the rest are the mesh's initial policies (MeshTimeout and friends), once the mesh has been processed
    assert all(p["name"].endswith("-all-m-insp") for p in inbound_policies[1:]), inbound_policies

    matched = json.loads(ok(cli([*base, "--policies", "-o", "json"], control_plane)))
    assert matched["inbounds"][0]["port"] == 10001
    assert [(o["port"], o["service"]) for o in matched["outbounds"]] == [(20001, "backend")]
    assert all(p["name"].endswith("-all-m-insp") for p in matched["outbounds"][0]["policies"])
    text = ok(cli([*base, "--policies"], control_plane))
    assert text.startswith("Policies\n") and "Dataplane" not in text

    listener_type = "type.googleapis.com/envoy.config.listener.v3.Listener"
    deadline = time.monotonic() + 20
    while True:  # the control plane computes the proxy's configuration asynchronously
        config = json.loads(ok(cli([*base, "--config"], control_plane)))
        if config["xds"].get(listener_type) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert config["xds"][listener_type], config
    assert any("10001" in json.dumps(listener) for listener in config["xds"][listener_type])
    as_yaml = yaml.safe_load(ok(cli([*base, "--config", "-o", "yaml"], control_plane)))
    assert as_yaml["xds"].keys() == config["xds"].keys()

    one_line_error(
        cli(["inspect", "dataplane", "ghost", "--mesh", "m-insp"], control_plane),
        "Error: Dataplane 'ghost' in mesh 'm-insp' not found",
    )
