"""``isthmus dp``: the data-plane agent commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Data-plane agent: bootstrap and supervise an Envoy proxy.", no_args_is_help=True)
