"""``isthmus generate dataplane-token | user-token | zone-token``: tokens issued by the control plane (as kumactl's).

Both call the REST API (``POST /tokens/dataplane``, ``POST /tokens/user``), which needs an admin: run them on
the control plane's host (loopback is an admin by default) or pass an admin's ``--auth-token``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

from isthmus.cli.resources import _auth_token_option, _client, _cp_address_option, _fail, _run

app = typer.Typer(help="Generate tokens for data planes and users.", no_args_is_help=True)


def parse_tag_options(pairs: Sequence[str]) -> dict[str, list[str]]:
    """``--tag KEY=VALUE`` options; ``KEY=V1,V2`` or a repeated key allows several values."""
    from isthmus.cli.client import CliError

    tags: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(parts):
            raise CliError(f'--tag "{pair}": expected KEY=VALUE (several values: KEY=V1,V2)')
        for value in parts:
            if value not in tags.setdefault(key, []):
                tags[key].append(value)
    return tags


@app.command("dataplane-token")
def dataplane_token(
    mesh: str = typer.Option("default", "--mesh", "-m", help="Mesh of the data plane"),
    name: str | None = typer.Option(None, "--name", help="Dataplane name (absent: any name, with the tags)"),
    tag: list[str] = typer.Option(
        [], "--tag", help="KEY=VALUE the Dataplane's tags must match; repeat it, or KEY=V1,V2"
    ),
    proxy_type: str = typer.Option(
        "dataplane",
        "--proxy-type",
        help="dataplane, ingress or egress (a zone proxy: --name is its ZoneIngress/ZoneEgress)",
    ),
    valid_for: str | None = typer.Option(None, "--valid-for", help="e.g. 24h, 720h (default: 10 years)"),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Print a data-plane token for ``isthmus dp run --dataplane-token-file``."""

    def action() -> str:
        body: dict[str, Any] = {"mesh": mesh, "type": proxy_type, "tags": parse_tag_options(tag)}
        if name:
            body["name"] = name
        if valid_for:
            body["validFor"] = valid_for
        with _client(cp_address, auth_token) as client:
            return client.post_text("/tokens/dataplane", body)

    typer.echo(_run(action))


@app.command("user-token")
def user_token(
    name: str = typer.Option(..., "--name", help="User name (it shows in the control plane's logs)"),
    group: list[str] = typer.Option(
        [], "--group", help="mesh-system:admin (everything) or mesh-system:readonly (reads only); repeatable"
    ),
    valid_for: str = typer.Option(..., "--valid-for", help="How long the token is valid, e.g. 24h"),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Print a user token for the REST API and the CLI (``--auth-token`` / ``ISTHMUS_AUTH_TOKEN``)."""
    if not name.strip():
        raise _fail("--name: must not be empty")

    def action() -> str:
        body = {"name": name, "groups": list(group), "validFor": valid_for}
        with _client(cp_address, auth_token) as client:
            return client.post_text("/tokens/user", body)

    typer.echo(_run(action))


@app.command("zone-token")
def zone_token(
    zone: str = typer.Option(..., "--zone", help="The zone's name (its control plane's --zone)"),
    scope: list[str] = typer.Option(
        [], "--scope", help="cp (a zone control plane), ingress, egress; repeatable (default: all three)"
    ),
    valid_for: str | None = typer.Option(None, "--valid-for", help="e.g. 720h (default: 10 years)"),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Print a zone token for ``isthmus cp run --mode zone --zone-token-file`` (run it against the global)."""

    def action() -> str:
        body: dict[str, Any] = {"zone": zone}
        if scope:
            body["scope"] = list(scope)
        if valid_for:
            body["validFor"] = valid_for
        with _client(cp_address, auth_token) as client:
            return client.post_text("/tokens/zone", body)

    typer.echo(_run(action))
