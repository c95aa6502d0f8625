"""``isthmus cp run``: the control plane."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from isthmus.cp.runtime import CpOptions, run_control_plane, split_address
from isthmus.cp.tls import TlsError

app = typer.Typer(help="Control plane: REST API and xDS server.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


@app.command("run")
def run(
    store: str = typer.Option("sqlite", help="memory | sqlite (in --data-dir) | sqlite:PATH"),
    api_address: str = typer.Option("127.0.0.1:5681", help="REST API address HOST:PORT"),
    xds_address: str = typer.Option("127.0.0.1:5678", help="gRPC ADS address HOST:PORT (TLS)"),
    api_tls_address: str = typer.Option("127.0.0.1:5682", help="REST API over HTTPS, address HOST:PORT"),
    tls_cert_file: Path | None = typer.Option(
        None,
        help="Server certificate (PEM, may hold a chain) for xDS and HTTPS; default: one issued from the CA "
        "in DATA_DIR/tls (agents trust DATA_DIR/tls/ca.crt)",
    ),
    tls_key_file: Path | None = typer.Option(None, help="Private key (PEM) of --tls-cert-file"),
    data_dir: Path = typer.Option(Path(".isthmus"), help="Directory for the SQLite store and the TLS CA"),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
) -> None:
    """Run the control plane until SIGINT/SIGTERM."""
    if store not in ("memory", "sqlite") and not store.startswith("sqlite:"):
        raise _fail(f"--store: {store!r} is not one of memory, sqlite, sqlite:PATH")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise _fail("give both --tls-cert-file and --tls-key-file, or neither")
    for flag, value in (
        ("--api-address", api_address),
        ("--xds-address", xds_address),
        ("--api-tls-address", api_tls_address),
    ):
        try:
            split_address(value)
        except ValueError as exc:
            raise _fail(f"{flag}: {exc}") from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = CpOptions(
        store=store,
        api_address=api_address,
        xds_address=xds_address,
        data_dir=data_dir,
        log_level=log_level,
        api_tls_address=api_tls_address,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
    )
    try:
        asyncio.run(run_control_plane(options))
    except (OSError, TlsError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        pass
