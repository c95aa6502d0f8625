"""``isthmus cp run``: the control plane."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer

from isthmus.auth import DP_AUTH_MODES
from isthmus.cp.runtime import CpOptions, run_control_plane, split_address
from isthmus.cp.tls import TlsError
from isthmus.resources.duration import parse_duration

app = typer.Typer(help="Control plane: REST API and xDS server.", no_args_is_help=True)


def parse_bool(text: str) -> bool | None:
    """``true``/``false`` (also yes/no, on/off, 1/0, any case); None for anything else."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    return None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def _multizone_options(
    mode: str,
    kds_address: str,
    zone: str | None,
    global_address: str | None,
    zone_token_file: Path | None,
    ca_cert_file: Path | None,
) -> dict[str, Any]:
    """The CpOptions fields of ``--mode`` and its flags, checked (a bad one exits 1 naming the flag)."""
    from isthmus.kds.zone_client import parse_global_address
    from isthmus.resources.zone import zone_name_problem

    if mode not in ("standalone", "global", "zone"):
        raise _fail(f"--mode: {mode!r} is not one of standalone, global, zone")
    zone_flags = {
        "--zone": zone,
        "--global-address": global_address,
        "--zone-token-file": zone_token_file,
        "--ca-cert-file": ca_cert_file,
    }
    if mode != "zone":
        given = [flag for flag, value in zone_flags.items() if value is not None]
        if given:
            raise _fail(f"{given[0]}: only with --mode zone")
        if mode == "global":
            try:
                split_address(kds_address)
            except ValueError as exc:
                raise _fail(f"--kds-address: {exc}") from None
        return {"mode": mode, "kds_address": kds_address}
    missing = [
        flag for flag in ("--zone", "--global-address", "--zone-token-file") if zone_flags[flag] is None
    ]
    if missing:
        raise _fail(f"--mode zone needs {', '.join(missing)}")
    assert zone is not None and global_address is not None and zone_token_file is not None
    problem = zone_name_problem(zone)
    if problem:
        raise _fail(f"--zone: {zone!r} {problem}")
    try:
        parse_global_address(global_address)
    except ValueError as exc:
        raise _fail(f"--global-address: {exc}") from None
    if not zone_token_file.is_file():
        raise _fail(f"--zone-token-file: {zone_token_file} is not a readable file")
    if ca_cert_file is not None and not ca_cert_file.is_file():
        raise _fail(f"--ca-cert-file: {ca_cert_file} is not a readable file")
    return {
        "mode": mode,
        "zone": zone,
        "global_address": global_address,
        "zone_token_file": zone_token_file,
        "kds_ca_cert_file": ca_cert_file,
    }


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
    dp_auth: str = typer.Option(
        "token",
        "--dp-auth",
        help="token: a data plane needs a data-plane token (isthmus generate dataplane-token) to register and "
        "to get its configuration; none: no data-plane authentication (trusted test set-ups only)",
    ),
    api_localhost_is_admin: str = typer.Option(
        "true",
        "--api-localhost-is-admin",
        metavar="BOOL",
        help="true: a REST request from a loopback address without a token acts as an admin; false: every "
        "request needs a token (--api-localhost-is-admin=false)",
    ),
    no_api_localhost_is_admin: bool = typer.Option(
        False, "--no-api-localhost-is-admin", help="Same as --api-localhost-is-admin=false"
    ),
    max_xds_streams: int = typer.Option(10_000, help="Concurrent ADS streams at most (more are refused)"),
    dataplane_cleanup_age: str = typer.Option(
        "72h", help="Remove a Dataplane whose agent has been gone (no ADS stream) this long; 0 keeps them"
    ),
    gateway_admin_address: str = typer.Option(
        "127.0.0.1:8001", help="Kong's Admin API of the gateway, address HOST:PORT; off: not served"
    ),
    mode: str = typer.Option(
        "standalone",
        help="standalone | global (holds meshes and policies, serves zones on --kds-address) | zone (connects "
        "to --global-address)",
    ),
    kds_address: str = typer.Option(
        "127.0.0.1:5685", help="global: where zone control planes connect (gRPC, TLS), address HOST:PORT"
    ),
    zone: str | None = typer.Option(None, help="zone: the zone's name"),
    global_address: str | None = typer.Option(
        None, help="zone: the global control plane's KDS address, grpcs://HOST:PORT"
    ),
    zone_token_file: Path | None = typer.Option(
        None,
        help="zone: the zone token (isthmus generate zone-token on the global), read at every connection",
    ),
    ca_cert_file: Path | None = typer.Option(
        None, help="zone: the CA that signed the global's certificate (the global's DATA_DIR/tls/ca.crt)"
    ),
) -> None:
    """Run the control plane until SIGINT/SIGTERM."""
    if dp_auth not in DP_AUTH_MODES:
        raise _fail(f"--dp-auth: {dp_auth!r} is not one of {', '.join(DP_AUTH_MODES)}")
    localhost_is_admin = parse_bool(api_localhost_is_admin)
    if localhost_is_admin is None:
        raise _fail(f"--api-localhost-is-admin: {api_localhost_is_admin!r} is not true or false")
    if no_api_localhost_is_admin:
        localhost_is_admin = False
    if max_xds_streams < 1:
        raise _fail(f"--max-xds-streams: {max_xds_streams} must be at least 1")
    try:
        cleanup_age = parse_duration(dataplane_cleanup_age)
    except ValueError as exc:
        raise _fail(f"--dataplane-cleanup-age: {exc}") from None
    if store not in ("memory", "sqlite") and not store.startswith("sqlite:"):
        raise _fail(f"--store: {store!r} is not one of memory, sqlite, sqlite:PATH")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise _fail("give both --tls-cert-file and --tls-key-file, or neither")
    for flag, value in (
        ("--api-address", api_address),
        ("--xds-address", xds_address),
        ("--api-tls-address", api_tls_address),
        *((("--gateway-admin-address", gateway_admin_address),) if gateway_admin_address != "off" else ()),
    ):
        try:
            split_address(value)
        except ValueError as exc:
            raise _fail(f"{flag}: {exc}") from None
    multizone = _multizone_options(mode, kds_address, zone, global_address, zone_token_file, ca_cert_file)
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
        dp_auth=dp_auth,
        api_localhost_is_admin=localhost_is_admin,
        max_xds_streams=max_xds_streams,
        dataplane_cleanup_age=cleanup_age,
        gateway_admin_address=None if gateway_admin_address == "off" else gateway_admin_address,
        **multizone,
    )
    try:
        asyncio.run(run_control_plane(options))
    except (OSError, TlsError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        pass
