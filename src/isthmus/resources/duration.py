"""Durations in policy specs: Go/Kubernetes duration strings (``500ms``, ``10s``, ``1m30s``, ``0s``)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator

from isthmus.pki.issuer import parse_duration

_ZERO = re.compile(r"^\+?(0+(\.0*)?[a-zµ]*)+$")


@lru_cache(maxsize=4096)
def duration_ms(text: str) -> int:
    """Milliseconds in a duration string; ``0s`` (or ``0``) is zero, which policies use to disable a timeout."""
    value = text.strip()
    if _ZERO.match(value):
        return 0
    delta = parse_duration(value)
    return int(delta.total_seconds() * 1000) or 1


def _check(text: str) -> str:
    duration_ms(text)
    return text


Duration = Annotated[str, AfterValidator(_check)]
