"""``python -m isthmus.cli``."""

from __future__ import annotations

from isthmus.cli.main import main

main()
