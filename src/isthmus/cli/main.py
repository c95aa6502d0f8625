"""The ``isthmus`` console command: one Typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from isthmus.cli import cp as cp_cmds
from isthmus.cli import demo as demo_cmds
from isthmus.cli import dp as dp_cmds
from isthmus.cli import gateway as gateway_cmds
from isthmus.cli import generate as generate_cmds
from isthmus.cli import resources as resource_cmds

app = typer.Typer(
    name="isthmus",
    help="Isthmus: a service mesh and API gateway for connecting services across clouds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cp_cmds.app, name="cp")
app.add_typer(dp_cmds.app, name="dp")
app.add_typer(demo_cmds.app, name="demo")
app.add_typer(generate_cmds.app, name="generate")
app.add_typer(gateway_cmds.app, name="gateway")
resource_cmds.register(app)


def main() -> None:
    app()
