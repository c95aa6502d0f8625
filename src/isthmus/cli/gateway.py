"""``isthmus gateway apply | dump``: decK-style sync of a Kong declarative file through the gateway's Admin API.

``apply -f kong.yaml`` posts the whole file to ``/config`` (``/{workspace}/config``), which makes the workspace
hold exactly the file in one atomic change; ``--dry-run`` asks for the diff only. ``dump`` prints the workspace
as a nested ``_format_version: "3.0"`` file that applies back with no change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from isthmus.cli.resources import _auth_token_option, _fail

app = typer.Typer(help="Kong gateway configuration (decK-style sync and dump).", no_args_is_help=True)

DEFAULT_ADMIN_ADDRESS = "http://127.0.0.1:8001"
ADMIN_HELP = "The gateway's Admin API URL (isthmus cp run --gateway-admin-address)"
ACTIONS = {"create": "creating", "update": "updating", "delete": "deleting"}


def _admin_option() -> Any:
    return typer.Option(
        DEFAULT_ADMIN_ADDRESS,
        "--gateway-admin-address",
        envvar="ISTHMUS_GATEWAY_ADMIN_ADDRESS",
        help=ADMIN_HELP,
    )


def _config_path(workspace: str | None) -> str:
    return "/config" if not workspace or workspace == "default" else f"/{quote(workspace, safe='')}/config"


def _workspace_of(text: str) -> str | None:
    """The file's ``_workspace`` (decK), when it is readable; the server checks the rest."""
    from isthmus.gateway.declarative import MAX_FILE_BYTES
    from isthmus.resources.loading import load_body

    try:
        doc = load_body(text, MAX_FILE_BYTES)
    except Exception:  # the server reports a bad file with its reason
        return None
    value = doc.get("_workspace") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


def _kong_error(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return f"the gateway Admin API answered HTTP {response.status_code}"


def _post(address: str, token: str | None, path: str, body: bytes, params: dict[str, str]) -> Any:
    import httpx

    from isthmus.cli.client import AUTH_HINT, CliError, normalize_address

    base = normalize_address(address)
    headers = {"Content-Type": "application/x-yaml", "Accept": "application/json"}
    if token and token.strip():
        headers["Authorization"] = f"Bearer {token.strip()}"
    try:
        with httpx.Client(base_url=base, timeout=120.0) as http:
            response = http.post(path, content=body, params=params, headers=headers)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the gateway Admin API at {base}: {exc or type(exc).__name__}") from None
    if response.status_code == 304:
        return {"changes": [], "summary": {"created": 0, "updated": 0, "deleted": 0}}
    if response.is_error:
        message = _kong_error(response)
        if response.status_code == 401 and not token:
            message += f" ({AUTH_HINT})"
        raise CliError(message, status=response.status_code)
    return response.json()


def _get(address: str, token: str | None, path: str) -> Any:
    import httpx

    from isthmus.cli.client import CliError, normalize_address

    base = normalize_address(address)
    headers = {"Accept": "application/json"}
    if token and token.strip():
        headers["Authorization"] = f"Bearer {token.strip()}"
    try:
        with httpx.Client(base_url=base, timeout=60.0) as http:
            response = http.get(path, headers=headers)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the gateway Admin API at {base}: {exc or type(exc).__name__}") from None
    if response.is_error:
        raise CliError(_kong_error(response), status=response.status_code)
    return response.json()


def print_report(report: dict[str, Any]) -> None:
    for change in report.get("changes", []):
        verb = ACTIONS.get(change.get("action"), str(change.get("action")))
        typer.echo(f"{verb} {change.get('entity_type')} {change.get('entity_name')}")
    summary = report.get("summary", {})
    typer.echo("Summary:")
    typer.echo(f"  Created: {summary.get('created', 0)}")
    typer.echo(f"  Updated: {summary.get('updated', 0)}")
    typer.echo(f"  Deleted: {summary.get('deleted', 0)}")


@app.command("apply")
def apply_cmd(
    file: str = typer.Option(..., "--file", "-f", help="Declarative file (_format_version 3.0); - for stdin"),
    workspace: str | None = typer.Option(
        None, "--workspace", help="Workspace (default: the file's _workspace, else default)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the changes without making them"),
    admin_address: str = _admin_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Make the workspace hold exactly the file (entities not in it are removed), as decK's sync does."""
    from isthmus.cli.client import CliError

    try:
        if file == "-":
            raw = sys.stdin.buffer.read()
        else:
            try:
                raw = Path(file).read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None
        target = workspace or _workspace_of(raw.decode("utf-8", "replace"))
        params = {"flatten_errors": "1", "dry_run" if dry_run else "changes": "1"}
        report = _post(admin_address, auth_token, _config_path(target), raw, params)
    except CliError as exc:
        raise _fail(exc.message) from None
    print_report(report)


@app.command("dump")
def dump_cmd(
    workspace: str | None = typer.Option(None, "--workspace", help="Workspace (default: default)"),
    select_tag: list[str] = typer.Option(
        [], "--select-tag", help="Only entities with this tag (repeatable; all must match)"
    ),
    admin_address: str = _admin_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Print the workspace as a nested _format_version 3.0 file."""
    from isthmus.cli.client import CliError

    try:
        path = _config_path(workspace)
        if select_tag:
            path += "?select_tags=" + quote(",".join(select_tag), safe=",")
        body = _get(admin_address, auth_token, path)
        if not isinstance(body, dict) or not isinstance(body.get("config"), str):
            raise CliError("the gateway Admin API answered GET /config without a config")
    except CliError as exc:
        raise _fail(exc.message) from None
    typer.echo(body["config"], nl=False)
