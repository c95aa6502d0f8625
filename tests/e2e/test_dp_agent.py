"""The data-plane agent with real Envoy processes: supervision, drain, several proxies per host, the CLI.

The control plane is faked with ``httpx.MockTransport``; registration against the real one is covered by the
end-to-end suite of the whole mesh.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from isthmus.cli import dp as dp_cli
from isthmus.dp.agent import (
    AgentError,
    AgentOptions,
    ControlPlaneClient,
    DataplaneAgent,
    format_problem,
    parse_dataplane,
    run_agent,
)
from isthmus.dp.bootstrap import build_bootstrap
from isthmus.dp.envoy_process import EnvoyError, EnvoyOptions, EnvoyProcess, EnvoyStartError

pytestmark = pytest.mark.e2e

CP = "http://127.0.0.1:5681"
DATAPLANE_YAML = """\
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 8080
    servicePort: 18080
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: 3000
    tags:
      kuma.io/service: db
"""


# -- helpers -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def proxy_bootstrap(admin_port: int = 0) -> dict[str, Any]:
    # The ADS port is closed: Envoy keeps retrying, its admin API works regardless.
    return build_bootstrap(
        node_id="default.web-1",
        cluster="web",
        xds_host="127.0.0.1",
        xds_port=free_port(),
        admin_port=admin_port,
    )


def fast_options(work_dir: Path, **overrides: Any) -> EnvoyOptions:
    values: dict[str, Any] = {
        "work_dir": work_dir,
        "drain_time": 0.5,
        "log_level": "warning",
        "backoff_initial": 0.1,
        "stop_timeout": 3.0,
    }
    values.update(overrides)
    return EnvoyOptions(**values)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_using(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


def listening_hosts(port: int) -> set[str]:
    """Local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    hosts: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    hosts.add(address)
    return hosts


async def admin_get(url: str, path: str = "/server_info") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        return await client.get(url + path)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def shm_files() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("envoy_shared_memory_*")} if shm.is_dir() else set()


# -- EnvoyProcess ------------------------------------------------------------------------------------------


async def test_envoy_starts_restarts_after_sigkill_and_stops_cleanly(tmp_path: Path) -> None:
    shm_before = shm_files()
    envoy = EnvoyProcess(proxy_bootstrap(), fast_options(tmp_path))
    async with envoy:
        first_pid = envoy.pid
        assert first_pid is not None and envoy.is_ready
        assert (await admin_get(envoy.admin_url)).status_code == 200
        port = httpx.URL(envoy.admin_url).port
        assert port is not None
        assert listening_hosts(port) == {"127.0.0.1"}  # admin on loopback only
        assert os.getpgid(first_pid) != os.getpgid(0)  # a terminal's Ctrl-C reaches the agent, not Envoy
        assert json.loads(envoy.bootstrap_path.read_text())["node"]["id"] == "default.web-1"

        os.kill(first_pid, signal.SIGKILL)
        await eventually(lambda: envoy.is_ready and envoy.pid not in (None, first_pid))
        assert envoy.restarts == 1
        second_pid = envoy.pid
        assert second_pid is not None
        assert (await admin_get(envoy.admin_url)).status_code == 200

    assert envoy.pid is None
    assert not alive(first_pid) and not alive(second_pid)
    assert processes_using(envoy.bootstrap_path) == []
    assert shm_files() <= shm_before
    assert envoy.log_path.stat().st_size > 0
    await envoy.wait()  # stopped on request: no error


async def test_two_envoys_run_side_by_side(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    envoys = [
        EnvoyProcess(proxy_bootstrap(port), fast_options(tmp_path / f"dp{i}")) for i, port in enumerate(ports)
    ]
    try:
        await asyncio.gather(*(e.start() for e in envoys))
        assert len({e.pid for e in envoys}) == 2
        for envoy, port in zip(envoys, ports, strict=True):
            assert envoy.admin_url == f"http://127.0.0.1:{port}"
            info = (await admin_get(envoy.admin_url)).json()
            assert info["command_line_options"]["restart_epoch"] == 0
    finally:
        await asyncio.gather(*(e.stop() for e in envoys))
    assert all(e.pid is None for e in envoys)


def static_proxy(work_dir: Path) -> dict[str, Any]:
    """A static bootstrap with an inbound and an outbound listener and a file access log for the admin API."""

    def listener(name: str, direction: str) -> dict[str, Any]:
        tcp_proxy = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        return {
            "name": name,
            "traffic_direction": direction,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {"@type": tcp_proxy, "stat_prefix": name, "cluster": "backend"},
                        }
                    ]
                }
            ],
        }

    file_log = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
    return {
        "node": {"id": "default.web-1", "cluster": "web"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": file_log,
                        "path": str(work_dir / "admin-access.log"),
                        "log_format": {
                            "text_format_source": {"inline_string": "%REQ(:METHOD)% %REQ(:PATH)%\n"}
                        },
                    },
                }
            ],
        },
        "static_resources": {
            "clusters": [{"name": "backend", "connect_timeout": "1s", "type": "STATIC"}],
            "listeners": [listener("inbound:web", "INBOUND"), listener("outbound:db", "OUTBOUND")],
        },
    }


async def test_stop_drains_inbound_listeners_before_terminating(tmp_path: Path) -> None:
    envoy = EnvoyProcess(static_proxy(tmp_path), fast_options(tmp_path, drain_time=1.0))
    await envoy.start()
    pid = envoy.pid
    assert pid is not None
    started = time.monotonic()
    await envoy.stop()
    assert 0.9 <= time.monotonic() - started < 4.0
    assert "POST /drain_listeners?inboundonly&graceful" in (tmp_path / "admin-access.log").read_text()
    assert not alive(pid)


async def test_skip_drain_shortens_the_stop(tmp_path: Path) -> None:
    envoy = EnvoyProcess(static_proxy(tmp_path), fast_options(tmp_path, drain_time=10.0))
    await envoy.start()
    started = time.monotonic()
    stopping = asyncio.create_task(envoy.stop())
    await asyncio.sleep(0.3)
    envoy.skip_drain()
    await stopping
    assert time.monotonic() - started < 3.0


async def test_start_failure_names_envoys_error(tmp_path: Path) -> None:
    with occupied_port() as port:
        envoy = EnvoyProcess(proxy_bootstrap(port), fast_options(tmp_path))
        with pytest.raises(EnvoyStartError, match="Address already in use") as info:
            await envoy.start()
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 1
    with pytest.raises(EnvoyError):
        await envoy.wait()
    await envoy.stop()  # no-op after a failed start


async def test_unusable_work_dir_is_a_start_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    envoy = EnvoyProcess(proxy_bootstrap(), fast_options(blocker / "work"))
    with pytest.raises(EnvoyStartError, match="cannot prepare work dir"):
        await envoy.start()


async def test_supervisor_gives_up_after_consecutive_failures(tmp_path: Path) -> None:
    port = free_port()
    envoy = EnvoyProcess(
        proxy_bootstrap(port), fast_options(tmp_path, backoff_initial=0.3, max_consecutive_failures=2)
    )
    await envoy.start()
    try:
        pid = envoy.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with socket.socket() as blocker:  # the restarted Envoy cannot bind its admin port any more
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            async with asyncio.timeout(5):
                while True:
                    try:
                        blocker.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        await asyncio.sleep(0.01)
            blocker.listen()
            with pytest.raises(EnvoyError, match="giving up"):
                async with asyncio.timeout(10):
                    await envoy.wait()
    finally:
        await envoy.stop()
    assert processes_using(envoy.bootstrap_path) == []


# -- the agent against a fake control plane ----------------------------------------------------------------


class FakeCp:
    def __init__(self, xds_address: str = "0.0.0.0:5678") -> None:
        self.xds_address = xds_address
        self.requests: list[httpx.Request] = []
        self.put_response: httpx.Response = httpx.Response(201, json={})
        self.failures_before_ready = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures_before_ready > 0:
            self.failures_before_ready -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET" and request.url.path == "/":
            return httpx.Response(200, json={"product": "Isthmus", "xdsAddress": self.xds_address})
        if request.method == "PUT":
            return self.put_response
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        return httpx.Response(404, json={"title": "Not found", "status": 404, "detail": "no route"})

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests]

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(self.handler)) as client:
            yield client


def agent_options(tmp_path: Path, **overrides: Any) -> AgentOptions:
    values: dict[str, Any] = {
        "dataplane": parse_dataplane(DATAPLANE_YAML),
        "cp_address": CP,
        "admin_port": 0,
        "work_dir": tmp_path / "work",
        "drain_time": 0.5,
        "log_level": "warning",
        "connect_timeout": 2.0,
        "envoy_overrides": {"backoff_initial": 0.1},
    }
    values.update(overrides)
    return AgentOptions(**values)


async def test_agent_registers_runs_envoy_and_deregisters(tmp_path: Path) -> None:
    cp = FakeCp(xds_address=f"0.0.0.0:{free_port()}")
    async with cp.client() as client:
        agent = DataplaneAgent(agent_options(tmp_path), http_client=client)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await eventually(lambda: (agent.envoy is not None and agent.envoy.is_ready) or running.done())
        assert not running.done(), running
        envoy = agent.envoy
        assert envoy is not None
        pid = envoy.pid
        assert pid is not None
        assert cp.calls() == [("GET", "/"), ("PUT", "/meshes/default/dataplanes/web-1")]
        sent = json.loads(cp.requests[1].content)
        admin_port = httpx.URL(envoy.admin_url).port
        assert sent["networking"]["admin"] == {"port": admin_port}
        assert sent["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "web"

        bootstrap = json.loads(envoy.bootstrap_path.read_text())
        assert bootstrap["node"]["id"] == "default.web-1"
        assert bootstrap["node"]["cluster"] == "web"
        endpoint = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        socket_address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert socket_address["address"] == "127.0.0.1"  # 0.0.0.0 replaced by the CP's host

        stop.set()
        await asyncio.wait_for(running, 10)
    assert cp.calls()[-1] == ("DELETE", "/meshes/default/dataplanes/web-1")
    assert not alive(pid)


async def test_run_agent_stops_on_sigterm(tmp_path: Path) -> None:
    cp = FakeCp(xds_address=f"127.0.0.1:{free_port()}")
    async with cp.client() as client:
        running = asyncio.create_task(run_agent(agent_options(tmp_path), http_client=client))
        log_path = tmp_path / "work" / "admin-address.txt"
        await eventually(lambda: log_path.exists() or running.done())
        await asyncio.sleep(0.2)  # Envoy up; the signal handlers are installed before registration
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, 10)
    assert cp.calls()[-1][0] == "DELETE"
    assert processes_using(tmp_path / "work" / "bootstrap.json") == []


async def test_envoy_failing_to_start_is_reported_and_deregistered(tmp_path: Path) -> None:
    fake_envoy = tmp_path / "envoy"
    fake_envoy.write_text("#!/bin/sh\necho 'boom: bad bootstrap' >&2\nexit 3\n")
    fake_envoy.chmod(0o755)
    cp = FakeCp(xds_address=f"127.0.0.1:{free_port()}")
    async with cp.client() as client:
        agent = DataplaneAgent(agent_options(tmp_path, envoy_binary=fake_envoy), http_client=client)
        with pytest.raises(AgentError) as info:
            await agent.run(asyncio.Event())
    assert str(info.value) == "Envoy exited while starting (exit code 3): boom: bad bootstrap"
    assert [m for m, _ in cp.calls()] == ["GET", "PUT", "DELETE"]


async def test_rejected_dataplane_is_one_line_and_starts_no_envoy(tmp_path: Path) -> None:
    cp = FakeCp()
    cp.put_response = httpx.Response(
        400,
        json={
            "title": "Invalid Dataplane",
            "status": 400,
            "detail": "networking.inbound[0].tags: tag 'kuma.io/service' is required",
            "invalid_parameters": [
                {"field": "networking.inbound[0].tags", "reason": "tag 'kuma.io/service' is required"},
                {"field": "networking.address", "reason": "'x' is not a valid IP address"},
            ],
        },
    )
    async with cp.client() as client:
        agent = DataplaneAgent(agent_options(tmp_path), http_client=client)
        with pytest.raises(AgentError) as info:
            await agent.run(asyncio.Event())
    message = str(info.value)
    assert message == (
        "control plane rejected Dataplane default/web-1: Invalid Dataplane (400): "
        "networking.inbound[0].tags: tag 'kuma.io/service' is required; "
        "networking.address: 'x' is not a valid IP address"
    )
    assert agent.envoy is None and not (tmp_path / "work").exists()
    assert [m for m, _ in cp.calls()] == ["GET", "PUT"]


async def test_agent_retries_while_the_cp_starts(tmp_path: Path) -> None:
    cp = FakeCp(xds_address=":5678")
    cp.failures_before_ready = 2
    async with cp.client() as client:
        api = ControlPlaneClient(client, "http://cp.example:5681/", connect_timeout=5.0)
        assert await api.xds_address() == ("cp.example", 5678)
    assert [m for m, _ in cp.calls()] == ["GET", "GET", "GET"]


async def test_agent_gives_up_on_an_unreachable_cp(tmp_path: Path) -> None:
    cp = FakeCp()
    cp.failures_before_ready = 1000
    async with cp.client() as client:
        api = ControlPlaneClient(client, CP, connect_timeout=0.5)
        with pytest.raises(AgentError, match="unreachable"):
            await api.xds_address()


async def test_server_errors_are_retried_then_reported(tmp_path: Path) -> None:
    cp = FakeCp()
    cp.put_response = httpx.Response(503, text="upstream not ready")
    async with cp.client() as client:
        api = ControlPlaneClient(client, CP, connect_timeout=0.5)
        with pytest.raises(AgentError, match="HTTP 503: upstream not ready"):
            await api.register(parse_dataplane(DATAPLANE_YAML))
    assert len(cp.requests) > 1


async def test_busy_admin_port_is_refused_before_registering(tmp_path: Path) -> None:
    cp = FakeCp()
    with occupied_port() as port:
        async with cp.client() as client:
            agent = DataplaneAgent(agent_options(tmp_path, admin_port=port), http_client=client)
            with pytest.raises(AgentError, match=f"admin port {port} .* already in use"):
                await agent.run(asyncio.Event())
    assert cp.requests == []


def test_format_problem_without_json() -> None:
    assert format_problem(httpx.Response(502, text="Bad\ngateway")) == "HTTP 502: Bad gateway"
    assert (
        format_problem(httpx.Response(404, json={"title": "Not found", "detail": "x"}))
        == "Not found (404): x"
    )


# -- CLI ---------------------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    root = typer.Typer(pretty_exceptions_enable=False)

    @root.callback()
    def _root() -> None:
        pass

    root.add_typer(dp_cli.app, name="dp")  # mounted as in isthmus.cli.main
    return root


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli(), ["dp", "run", *args])
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("type: Dataplane\nname: x\n  mesh: [\n", "invalid YAML at line 3"),
        ("- just\n- a list\n", "expected a Dataplane resource"),
        ("", "empty document"),
        ("type: Mesh\nname: x\nmesh: default\nnetworking: {}\n", "type: must be 'Dataplane'"),
    ],
)
def test_cli_bad_dataplane_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "dp.yaml"
    path.write_text(content)
    code, stderr = invoke("--dataplane-file", str(path))
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.startswith("Error: ")
    assert expected in stderr and str(path) in stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    code, stderr = invoke("--dataplane-file", str(tmp_path / "nope.yaml"))
    assert (code, stderr) == (1, f"Error: --dataplane-file {tmp_path / 'nope.yaml'}: no such file\n")


@pytest.mark.parametrize(("proxy_type", "kind"), [("ingress", "ZoneIngress"), ("egress", "ZoneEgress")])
def test_cli_zone_proxy_types_run_their_resource_only(proxy_type: str, kind: str) -> None:
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, "--proxy-type", proxy_type)
    assert code == 1
    assert stderr == f"Error: --proxy-type {proxy_type} runs a {kind} resource, and only it\n"


def test_cli_gateway_options_are_checked() -> None:
    # a sidecar Dataplane is not a gateway; --proxy-listen(-tls) is only for gateways and takes IP:PORT
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, "--proxy-listen-tls", "127.0.0.1:1")
    assert (code, stderr) == (1, "Error: --proxy-listen: only for --proxy-type gateway\n")
    gateway = DATAPLANE_YAML.replace("networking:", "networking:\n  gateway: {tags: {kuma.io/service: edge}}")
    code, stderr = invoke(
        "--dataplane", gateway, "--proxy-type", "gateway", "--proxy-listen-tls", "localhost:1"
    )
    assert (code, stderr) == (1, "Error: --proxy-listen-tls 'localhost:1': expected IP:PORT\n")
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, "--proxy-listen", "127.0.0.1:1")
    assert (code, stderr) == (1, "Error: --proxy-listen: only for --proxy-type gateway\n")
    code, stderr = invoke(
        "--dataplane", DATAPLANE_YAML, "--proxy-type", "gateway", "--proxy-listen", "127.0.0.1:1"
    )
    assert code == 1 and "the Dataplane needs networking.gateway" in stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "exactly one of --dataplane-file FILE or --dataplane YAML"),
        (("--dataplane", DATAPLANE_YAML, "--log-level", "loud"), "--log-level 'loud'"),
        (("--dataplane", DATAPLANE_YAML, "--admin-port", "70000"), "--admin-port 70000"),
    ],
)
def test_cli_usage_errors(args: tuple[str, ...], expected: str) -> None:
    code, stderr = invoke(*args)
    assert code == 1 and expected in stderr and stderr.count("\n") == 1


def test_cli_in_a_real_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, typer
        from isthmus.cli import dp
        root = typer.Typer(pretty_exceptions_enable=False)
        root.callback()(lambda: None)
        root.add_typer(dp.app, name="dp")
        root(sys.argv[1:])
        """
    )
    bad = tmp_path / "dp.yaml"
    bad.write_text("name: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "dp", "run", "--dataplane-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: --dataplane-file {bad}: invalid YAML")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


# -- TLS and tokens ----------------------------------------------------------------------------------------


async def test_token_and_ca_reach_the_cp_calls_and_the_bootstrap(tmp_path: Path) -> None:
    from isthmus.cp.tls import ensure_server_tls

    ca_file = ensure_server_tls(tmp_path / "cp", ["127.0.0.1:5678"]).ca_file
    assert ca_file is not None
    cp = FakeCp(xds_address=f"127.0.0.1:{free_port()}")
    options = agent_options(tmp_path, ca_cert=ca_file.read_text(), dataplane_token="aaa.bbb.ccc")
    async with cp.client() as client:
        agent = DataplaneAgent(options, http_client=client)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await eventually(lambda: (agent.envoy is not None and agent.envoy.is_ready) or running.done())
        assert agent.envoy is not None
        bootstrap = json.loads(agent.envoy.bootstrap_path.read_text())
        assert os.stat(agent.envoy.bootstrap_path).st_mode & 0o777 == 0o600
        stop.set()
        await asyncio.wait_for(running, 10)
    service = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert service["initial_metadata"] == [{"key": "authorization", "value": "Bearer aaa.bbb.ccc"}]
    tls = bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "inline_string": ca_file.read_text()
    }
    sent = {(r.method, r.headers.get("authorization")) for r in cp.requests}
    assert sent == {("GET", None), ("PUT", "Bearer aaa.bbb.ccc"), ("DELETE", "Bearer aaa.bbb.ccc")}


@pytest.mark.parametrize(
    ("content", "flag", "expected"),
    [
        (None, "--ca-cert-file", "no such file"),
        ("not a certificate", "--ca-cert-file", "no PEM certificate in the file"),
        (None, "--dataplane-token-file", "no such file"),
        ("  \n", "--dataplane-token-file", "the data-plane token is empty"),
        ("two words\n", "--dataplane-token-file", "not a token"),
    ],
)
def test_cli_unusable_ca_or_token_file(tmp_path: Path, content: str | None, flag: str, expected: str) -> None:
    path = tmp_path / "file"
    if content is not None:
        path.write_text(content)
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, flag, str(path))
    assert code == 1 and stderr.count("\n") == 1
    assert stderr.startswith(f"Error: {flag} {path}") and expected in stderr


def test_cli_unreadable_token_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "token"
    path.write_text("a.b.c")
    path.chmod(0)
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, "--dataplane-token-file", str(path))
    assert (code, stderr) == (1, f"Error: --dataplane-token-file {path}: cannot read: Permission denied\n")


def test_cli_token_twice_and_bad_inline_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a.b.c\n")
    code, stderr = invoke(
        "--dataplane", DATAPLANE_YAML, "--dataplane-token", "x", "--dataplane-token-file", str(path)
    )
    assert (code, stderr) == (1, "Error: give at most one of --dataplane-token and --dataplane-token-file\n")
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, "--dataplane-token", "not:a token")
    assert code == 1 and stderr.startswith("Error: --dataplane-token: not a token")


@pytest.mark.parametrize("flag", ["--ca-cert-file", "--dataplane-token-file"])
def test_cli_a_directory_is_not_a_readable_file(tmp_path: Path, flag: str) -> None:
    code, stderr = invoke("--dataplane", DATAPLANE_YAML, flag, str(tmp_path))
    assert (code, stderr) == (1, f"Error: {flag} {tmp_path}: is a directory\n")
