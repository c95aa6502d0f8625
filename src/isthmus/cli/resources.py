"""``isthmus apply | get | delete | inspect``: resource commands against the control plane's REST API."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the resource commands to the top-level app."""
