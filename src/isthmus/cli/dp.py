"""``isthmus dp``: the data-plane agent commands."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Data-plane agent: bootstrap and supervise an Envoy proxy.", no_args_is_help=True)

_PYTHON_LOG_LEVELS = {"trace": "DEBUG", "warn": "WARNING", "off": "CRITICAL"}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {' '.join(message.split())}", err=True)
    return typer.Exit(1)


def _ports(flag: str, text: str) -> tuple[int, ...]:
    from isthmus.dp.agent import AgentError

    ports = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise AgentError(f"{flag} {text!r}: {item!r} is not a port number (1-65535)")
        ports.append(int(item))
    return tuple(ports)


@app.command("run")
def run(
    cp_address: str = typer.Option(
        "http://127.0.0.1:5681", envvar="ISTHMUS_CP_ADDRESS", help="Control-plane REST API URL"
    ),
    dataplane_file: Path | None = typer.Option(
        None, "--dataplane-file", help="Dataplane resource (Kuma Universal YAML) file"
    ),
    dataplane: str | None = typer.Option(None, "--dataplane", help="Dataplane resource as inline YAML"),
    admin_port: int | None = typer.Option(
        None, help="Envoy admin port on 127.0.0.1 (default: networking.admin.port or 9901; 0 picks one)"
    ),
    proxy_type: str = typer.Option(
        "sidecar", help="sidecar | gateway (Kong's configuration of --workspace on --proxy-listen)"
    ),
    proxy_listen: list[str] = typer.Option(
        [],
        "--proxy-listen",
        help="Gateway: HOST:PORT the proxy serves HTTP on (repeatable); without it (and --proxy-listen-tls) "
        "Kuma's delegated mode: only the Dataplane's outbounds, for another gateway in front",
    ),
    proxy_listen_tls: list[str] = typer.Option(
        [], "--proxy-listen-tls", help="Gateway: HOST:PORT it serves HTTPS on, with the certificates' SNIs"
    ),
    workspace: str = typer.Option("default", "--workspace", help="Gateway: the Kong workspace it serves"),
    status_listen: str | None = typer.Option(
        None,
        "--status-listen",
        help="Gateway: HOST:PORT of Kong's Status API (GET /metrics: the prometheus plugin)",
    ),
    dns_port: int | None = typer.Option(
        None,
        "--dns-port",
        "--dns-envoy-port",
        help="Serve the mesh's names (generated hostnames, <service>.mesh) on 127.0.0.1:PORT/udp, by Envoy's "
        "DNS filter (Kuma's --dns-envoy-port); the proxy also gets listeners on the services' VIPs",
    ),
    transparent_proxy: bool = typer.Option(
        False,
        "--transparent-proxy",
        help="Redirect the application's TCP through Envoy with iptables in this network namespace (needs "
        "root; rules removed on exit); the Dataplane gets Kuma's networking.transparentProxying if it has none",
    ),
    transparent_proxy_user: str = typer.Option(
        "5678",
        "--transparent-proxy-user",
        "--kuma-dp-user",
        help="User (name or uid) Envoy runs as with --transparent-proxy: its traffic is never redirected",
    ),
    redirect_dns: bool = typer.Option(
        False,
        "--redirect-dns",
        help="With --transparent-proxy: send the application's DNS (udp/53) to the data plane's DNS "
        "(--dns-port, default 15053)",
    ),
    exclude_inbound_ports: str = typer.Option(
        "",
        "--exclude-inbound-ports",
        help="With --transparent-proxy: inbound ports never redirected (1,2,...)",
    ),
    exclude_outbound_ports: str = typer.Option(
        "", "--exclude-outbound-ports", help="With --transparent-proxy: outbound ports never redirected"
    ),
    work_dir: Path | None = typer.Option(None, help="Directory for the bootstrap and Envoy's log"),
    drain_time: float = typer.Option(2.0, help="Seconds to drain inbound listeners on shutdown"),
    log_level: str = typer.Option("info", help="trace | debug | info | warning | error | critical | off"),
    ca_cert_file: Path | None = typer.Option(
        None,
        envvar="ISTHMUS_CA_CERT_FILE",
        help="CA certificate (PEM) that issued the control plane's certificate, e.g. the control plane's "
        "DATA_DIR/tls/ca.crt; without it the control plane is not verified",
    ),
    dataplane_token: str | None = typer.Option(
        None, envvar="ISTHMUS_DATAPLANE_TOKEN", help="Data-plane token (isthmus generate dataplane-token)"
    ),
    dataplane_token_file: Path | None = typer.Option(
        None, envvar="ISTHMUS_DATAPLANE_TOKEN_FILE", help="File holding the data-plane token"
    ),
) -> None:
    """Register a Dataplane with the control plane and run its Envoy until SIGINT/SIGTERM."""
    # Imported here so that `isthmus --help` and the other command groups stay fast.
    from isthmus.dp.agent import (
        AgentError,
        AgentOptions,
        TransparentProxyOptions,
        check_proxy_type,
        load_ca_cert_file,
        load_dataplane_file,
        load_token,
        parse_dataplane,
    )
    from isthmus.dp.envoy_process import ENVOY_LOG_LEVELS

    try:
        check_proxy_type(proxy_type)
        if log_level not in ENVOY_LOG_LEVELS:
            raise AgentError(f"--log-level {log_level!r}: expected one of {', '.join(ENVOY_LOG_LEVELS)}")
        if drain_time < 0:
            raise AgentError(f"--drain-time {drain_time:g}: must be >= 0")
        if admin_port is not None and not 0 <= admin_port <= 65535:
            raise AgentError(f"--admin-port {admin_port}: not a valid port (0-65535)")
        if (dataplane_file is None) == (dataplane is None):
            raise AgentError("give exactly one of --dataplane-file FILE or --dataplane YAML")
        resource: dict[str, Any] = (
            load_dataplane_file(dataplane_file)
            if dataplane_file is not None
            else parse_dataplane(dataplane or "")
        )
        options = AgentOptions(
            dataplane=resource,
            cp_address=cp_address,
            admin_port=admin_port,
            proxy_type=proxy_type,
            work_dir=work_dir,
            drain_time=drain_time,
            log_level=log_level,
            ca_cert=load_ca_cert_file(ca_cert_file) if ca_cert_file is not None else None,
            dataplane_token=load_token(dataplane_token, dataplane_token_file),
            gateway_listen=tuple(proxy_listen),
            gateway_listen_tls=tuple(proxy_listen_tls),
            gateway_workspace=workspace,
            gateway_status_listen=status_listen,
            dns_port=dns_port,
            transparent_proxy=TransparentProxyOptions(
                user=transparent_proxy_user,
                redirect_dns=redirect_dns,
                exclude_inbound_ports=_ports("--exclude-inbound-ports", exclude_inbound_ports),
                exclude_outbound_ports=_ports("--exclude-outbound-ports", exclude_outbound_ports),
            )
            if transparent_proxy
            else None,
        )
        if not transparent_proxy and (redirect_dns or exclude_inbound_ports or exclude_outbound_ports):
            raise AgentError("--redirect-dns and --exclude-*-ports need --transparent-proxy")
    except AgentError as exc:
        raise _fail(str(exc)) from None

    from isthmus.dp.agent import run_agent

    level = _PYTHON_LOG_LEVELS.get(log_level, log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        asyncio.run(run_agent(options))
    except AgentError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        pass
