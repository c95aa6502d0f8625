"""``isthmus apply | get | delete | inspect``: resource commands against the control plane's REST API.

Modelled on kumactl: kinds are named by their plural (``dataplanes``), singular (``dataplane``), kind
(``Dataplane``) or short name (``dp``); every failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from isthmus.cli.client import CpClient
    from isthmus.resources.registry import Registry, Resource, ResourceType

T = TypeVar("T")

CP_ADDRESS_HELP = "Control-plane REST API URL"
DEFAULT_CP_ADDRESS = "http://127.0.0.1:5681"
TIME_FIELDS = ("creationTime", "modificationTime")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def _cp_address_option() -> Any:
    return typer.Option(DEFAULT_CP_ADDRESS, "--cp-address", envvar="ISTHMUS_CP_ADDRESS", help=CP_ADDRESS_HELP)


def _auth_token_option() -> Any:
    return typer.Option(
        None,
        "--auth-token",
        envvar="ISTHMUS_AUTH_TOKEN",
        help="User token for the control plane's API (isthmus generate user-token)",
    )


def _mesh_option() -> Any:
    return typer.Option("default", "--mesh", "-m", help="Mesh of mesh-scoped resources")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {' '.join(message.split())}", err=True)
    return typer.Exit(1)


def _run(action: Callable[[], T]) -> T:
    """Run a command body: a :class:`CliError` becomes one line on stderr and exit code 1."""
    from isthmus.cli.client import CliError

    try:
        return action()
    except CliError as exc:
        raise _fail(exc.message) from None


# -- pieces shared by the commands ----------------------------------------------------------------------------------
def _registry() -> Registry:
    from isthmus.catalog import default_registry

    return default_registry()


def resolve_kind(registry: Registry, word: str) -> ResourceType:
    """The public type named by ``word``, or a :class:`CliError` listing the known kinds."""
    from isthmus.cli.client import CliError

    rtype = registry.lookup(word)
    if rtype is None or rtype.internal:
        known = ", ".join(t.plural for t in registry.public())
        raise CliError(f'unknown kind "{word}"; known kinds: {known}')
    return rtype


def _check_format(output: str, allowed: Sequence[str]) -> str:
    from isthmus.cli.client import CliError

    fmt = output.lower()
    if fmt not in allowed:
        raise CliError(f'--output "{output}": expected one of {", ".join(allowed)}')
    return fmt


def _client(cp_address: str, auth_token: str | None = None) -> CpClient:
    from isthmus.cli.client import CpClient

    return CpClient(cp_address, auth_token=auth_token)


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    """``--var KEY=VALUE`` pairs; the value may itself contain ``=``."""
    from isthmus.cli.client import CliError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or _PLACEHOLDER.fullmatch("{{" + key + "}}") is None:
            raise CliError(f'--var "{pair}": expected KEY=VALUE')
        out[key] = value
    return out


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``{{ KEY }}`` placeholders (kumactl's ``--var``); a placeholder without a value is an error."""
    from isthmus.cli.client import CliError

    missing: list[tuple[str, int]] = []

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in variables:
            return variables[key]
        missing.append((key, text.count("\n", 0, match.start()) + 1))
        return match.group(0)

    result = _PLACEHOLDER.sub(replace, text)
    if missing:
        key, line = missing[0]
        raise CliError(f"placeholder {{{{ {key} }}}} at line {line} has no value; pass --var {key}=VALUE")
    return result


def _read_input(source: str) -> str:
    from isthmus.cli.client import CliError

    if source == "-":
        return sys.stdin.read()
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(source, timeout=10.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot fetch {source}: {exc}") from None
        if response.is_error:
            raise CliError(f"cannot fetch {source}: HTTP {response.status_code} {response.reason_phrase}")
        return response.text
    try:
        with open(source, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {source}: not UTF-8 text") from None


def _describe(doc: Any) -> str:
    if isinstance(doc, Mapping) and isinstance(doc.get("type"), str) and isinstance(doc.get("name"), str):
        return f' ({doc["type"]} "{doc["name"]}")'
    return ""


def validate_documents(text: str, registry: Registry, source: str) -> list[tuple[Resource, dict[str, Any]]]:
    """Parse and validate every document; the first invalid one raises a :class:`CliError`.

    Returns each resource with the document to send (creation/modification times dropped), Meshes first so
    that a file may define a mesh after the resources that live in it.
    """
    from isthmus.cli.client import CliError
    from isthmus.resources.errors import ResourceValidationError
    from isthmus.resources.registry import Scope, load_documents, parse_document

    try:
        docs = load_documents(text)
    except ResourceValidationError as exc:
        raise CliError(str(exc)) from None
    if not docs:
        raise CliError(f"no resources found in {'stdin' if source == '-' else source}")
    parsed: list[tuple[Resource, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        try:
            resource = parse_document(doc, registry)
        except ResourceValidationError as exc:
            prefix = f"document {i + 1}{_describe(doc)}: " if len(docs) > 1 else ""
            raise CliError(prefix + str(exc)) from None
        assert isinstance(doc, Mapping)
        parsed.append((resource, {k: v for k, v in doc.items() if k not in TIME_FIELDS}))
    return sorted(parsed, key=lambda pair: 0 if pair[0].type.scope is Scope.GLOBAL else 1)


# -- commands -----------------------------------------------------------------------------------------------------
def apply(
    file: str = typer.Option(
        ...,
        "--file",
        "-f",
        help="Resources as YAML (multi-document) or JSON: a path, an http(s) URL, or - for stdin",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and print the resolved resources; send nothing"
    ),
    var: list[str] | None = typer.Option(
        None, "--var", help="KEY=VALUE: replace {{ KEY }} placeholders in the input (repeatable)"
    ),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Create or update resources. Every document is validated before anything is sent."""

    def body() -> None:
        from isthmus.cli.client import CliError
        from isthmus.cli.output import to_yaml_documents

        registry = _registry()
        variables = parse_vars(var or [])
        text = substitute(_read_input(file), variables)
        resources = validate_documents(text, registry, file)
        if dry_run:
            typer.echo(to_yaml_documents([doc for _, doc in resources]), nl=False)
            return
        with _client(cp_address, auth_token) as client:
            for resource, doc in resources:
                try:
                    created, _ = client.put(resource.type, resource.mesh, resource.name, doc)
                except CliError as exc:
                    if exc.status is None or len(resources) == 1:
                        raise
                    raise CliError(f'{resource.type.kind} "{resource.name}": {exc.message}') from None
                verb = "created" if created else "updated"
                typer.echo(f'{resource.type.kind} "{resource.name}" {verb}')

    _run(body)


def get(
    kind: str = typer.Argument(..., help="meshes | dataplanes | meshtrafficpermissions (or singular)"),
    name: str | None = typer.Argument(None, help="Show only this resource"),
    mesh: str = _mesh_option(),
    output: str = typer.Option("table", "--output", "-o", help="table | yaml | json"),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """List resources of a kind, or show one."""

    def body() -> None:
        from isthmus.cli import output as out

        registry = _registry()
        rtype = resolve_kind(registry, kind)
        fmt = _check_format(output, out.FORMATS)
        with _client(cp_address, auth_token) as client:
            if fmt != "table":
                if name is not None:
                    data: Any = client.get(rtype, mesh, name)
                else:
                    data = out.list_document(client.list_resources(rtype, mesh))
                typer.echo(out.render(data, fmt), nl=False)
                return
            headers: Sequence[str]
            if rtype.kind == "Zone":  # each zone online or offline (isthmus.kds)
                from isthmus.cli.zones import ZONE_HEADERS, zone_rows

                overviews = client.get_json("/zones+insights").get("items", [])
                if name is not None:
                    overviews = [o for o in overviews if o.get("name") == name] or [
                        client.get(rtype, mesh, name)
                    ]
                headers, rows = ZONE_HEADERS, zone_rows(overviews)
            elif rtype.kind == "Mesh":
                items = (
                    [client.get(rtype, mesh, name)]
                    if name is not None
                    else client.list_resources(rtype, mesh)
                )
                headers, rows = out.MESH_HEADERS, out.mesh_rows(items)
            elif rtype.kind == "Dataplane":
                overviews = (
                    [client.dataplane_overview(mesh, name)]
                    if name is not None
                    else client.dataplane_overviews(mesh)
                )
                headers, rows = out.DATAPLANE_HEADERS, out.overview_rows(overviews)
            else:
                items = (
                    [client.get(rtype, mesh, name)]
                    if name is not None
                    else client.list_resources(rtype, mesh)
                )
                if rtype.is_policy:
                    headers, rows = out.POLICY_HEADERS, out.policy_rows(items)
                else:
                    headers, rows = out.GENERIC_HEADERS, out.generic_rows(items)
            typer.echo(out.render_table(headers, rows), nl=False)

    _run(body)


def delete(
    kind: str = typer.Argument(..., help="meshes | dataplanes | meshtrafficpermissions (or singular)"),
    name: str = typer.Argument(..., help="Name of the resource"),
    mesh: str = _mesh_option(),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Delete one resource (deleting a Mesh deletes everything in it)."""

    def body() -> None:
        rtype = resolve_kind(_registry(), kind)
        with _client(cp_address, auth_token) as client:
            client.delete(rtype, mesh, name)
        typer.echo(f'{rtype.kind} "{name}" deleted')

    _run(body)


def inspect(
    kind: str = typer.Argument(..., help="dataplane, zoneingress or zoneegress"),
    name: str = typer.Argument(..., help="Name of the dataplane (or zone proxy)"),
    mesh: str = _mesh_option(),
    config: bool = typer.Option(False, "--config", help="Print the Envoy configuration the proxy is given"),
    policies: bool = typer.Option(
        False, "--policies", help="Print the policies matched per inbound/outbound"
    ),
    rules: bool = typer.Option(
        False, "--rules", help="Print Kuma's rule view: to/from/inbound rules per policy type"
    ),
    zones: bool = typer.Option(
        False, "--zones", help="Print each cluster's zones: priority, weight, the ingress/egress carrying it"
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="yaml | json (default: a summary; JSON for --config)"
    ),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Show a dataplane's status and matched policies, (--config) its Envoy configuration or (--rules) Kuma's
    rule view of it."""

    def body() -> None:
        from isthmus.cli import output as out
        from isthmus.cli.client import CliError

        rtype = resolve_kind(_registry(), kind)
        if rtype.kind in ("ZoneIngress", "ZoneEgress"):  # Kuma's inspect zoneingress|zoneegress NAME
            fmt = _check_format(output, ("yaml", "json")) if output is not None else None
            with _client(cp_address, auth_token) as client:
                view = client.get_json(f"/{rtype.plural}/{name}/_config")
            if config:
                text = out.render(view["xds"], fmt or "json")
            else:
                text = out.render(view, fmt) if fmt else out.render_zone_proxy(view)
            typer.echo(text, nl=False)
            return
        if rtype.kind != "Dataplane":
            raise CliError(f'inspect supports dataplanes, zoneingresses and zoneegresses, not "{kind}"')
        chosen = [
            flag
            for flag, on in (
                ("--config", config),
                ("--policies", policies),
                ("--rules", rules),
                ("--zones", zones),
            )
            if on
        ]
        if len(chosen) > 1:
            raise CliError(f"{' and '.join(chosen)} cannot be used together")
        fmt = _check_format(output, ("yaml", "json")) if output is not None else None
        with _client(cp_address, auth_token) as client:
            if config:
                text = out.render(client.dataplane_config(mesh, name), fmt or "json")
            elif policies:
                matched = client.dataplane_policies(mesh, name)
                text = out.render(matched, fmt) if fmt else out.render_policies(matched)
            elif rules:
                found = client.dataplane_rules(mesh, name)
                text = out.render(found, fmt) if fmt else out.render_rules(found)
            elif zones:
                found = client.get_json(f"/meshes/{mesh}/dataplanes/{name}/_zones")
                text = out.render(found, fmt) if fmt else out.render_dataplane_zones(found)
            else:
                overview = client.dataplane_overview(mesh, name)
                matched = client.dataplane_policies(mesh, name)
                if fmt:
                    text = out.render({"insight": overview, "policies": matched}, fmt)
                else:
                    text = out.render_insight(overview) + "\n" + out.render_policies(matched)
        typer.echo(text, nl=False)

    _run(body)


def explain(
    from_: str = typer.Option(..., "--from", help="The calling data plane"),
    to: str = typer.Option(..., "--to", help="The destination service (kuma.io/service)"),
    path: str = typer.Option("/", "--path", help="Request path (with an optional query string)"),
    method: str = typer.Option("GET", "--method"),
    header: list[str] = typer.Option([], "--header", help="Request header K=V (repeatable)"),
    mesh: str = _mesh_option(),
    output: str | None = typer.Option(None, "--output", "-o", help="yaml | json (default: a summary)"),
    cp_address: str = _cp_address_option(),
    auth_token: str | None = _auth_token_option(),
) -> None:
    """Explain what a request would meet: route, backend weights, timeouts, retries, limits, permission."""

    def body() -> None:
        from isthmus.cli import output as out

        fmt = _check_format(output, ("yaml", "json")) if output is not None else None
        with _client(cp_address, auth_token) as client:
            result = client.explain(mesh, from_, to, path, method, header)
        typer.echo(out.render(result, fmt) if fmt else out.render_explain(result), nl=False)

    _run(body)


def register(app: typer.Typer) -> None:
    """Add the resource commands to the top-level app."""
    app.command("apply")(apply)
    app.command("get")(get)
    app.command("delete")(delete)
    app.command("inspect")(inspect)
    app.command("explain")(explain)
