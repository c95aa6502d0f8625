"""``isthmus demo``: the local demo; ``isthmus demo app``: one demo service (also used by tests)."""

from __future__ import annotations

import asyncio

import typer

app = typer.Typer(help="Local demo on loopback.", invoke_without_command=True)


@app.callback()
def demo(
    ctx: typer.Context,
    data_dir: str = typer.Option(".isthmus-demo", help="Where the demo keeps its SQLite store and logs"),
    api_port: int = typer.Option(5681, help="REST API port"),
    xds_port: int = typer.Option(5678, help="xDS port"),
    api_tls_port: int = typer.Option(5682, help="REST API port over HTTPS"),
    exit_after_check: bool = typer.Option(False, "--check", help="Exit after verifying traffic flows"),
    multizone: bool = typer.Option(
        False,
        "--multizone",
        help="Two zones (azure, gcp) in network namespaces with a global control plane, a zone ingress and a "
        "gateway each, catalog in gcp only (needs root)",
    ),
) -> None:
    """Run a control plane, demo services and their sidecars, and show what to try."""
    if ctx.invoked_subcommand is not None:
        return
    if multizone:
        from isthmus.demo.multizone import MultiZoneOptions, run_multizone
        from isthmus.demo.zones import GlobalPorts

        data = data_dir if data_dir != ".isthmus-demo" else ".isthmus-demo-multizone"
        ports = GlobalPorts(
            api=api_port, api_tls=api_tls_port, xds=xds_port
        )  # the global's; zones have their own
        raise typer.Exit(run_multizone(MultiZoneOptions(data, global_ports=ports, check=exit_after_check)))
    from isthmus.demo.runner import DemoOptions, run_demo

    code = asyncio.run(run_demo(DemoOptions(data_dir, api_port, xds_port, exit_after_check, api_tls_port)))
    raise typer.Exit(code)


@app.command("app")
def demo_app(
    service: str = typer.Option(..., help="Service name reported in responses"),
    port: int = typer.Option(..., help="Port to listen on"),
    host: str = typer.Option("127.0.0.1"),
    version: str = typer.Option("v1"),
    instance: str = typer.Option(""),
    upstream: str = typer.Option("", help="URL to call on every request (through the sidecar)"),
    tcp: bool = typer.Option(False, help="Serve a TCP echo instead of HTTP"),
    fail_all: bool = typer.Option(False, help="Answer 503 to everything but /health (resilience tests)"),
) -> None:
    """Serve one demo service: HTTP JSON echo, or TCP echo with --tcp."""
    from isthmus.demo.apps import echo_app, start_tcp_echo

    if tcp:

        async def serve_tcp() -> None:
            server = await start_tcp_echo(host, port, instance or service)
            async with server:
                await server.serve_forever()

        asyncio.run(serve_tcp())
        return
    import uvicorn

    uvicorn.run(
        echo_app(service, version, instance, upstream, fail_all),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
