"""Durations in resource specs: Go/Kubernetes duration strings (``500ms``, ``10s``, ``1m30s``, ``0s``).

Every duration a user gives (policy timeouts and intervals, certificate lifetimes) is bounded: at most
:data:`MAX_DURATION` (10 years, 87600h), never negative, at most :data:`MAX_DURATION_TEXT` characters, so a
huge number can neither overflow a ``timedelta`` or a ``datetime`` nor make the parser work hard.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator

from isthmus.pki.issuer import parse_duration as _parse_go_duration

MAX_DURATION = timedelta(days=3650)  # 10 years = 87600h
MAX_DURATION_TEXT = 64
_UNIT = r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h|d|y)"
# Zero written any way Go accepts (``0``, ``0s``, ``0.0m``, ``0h0m``): every term ends with a unit except a
# lone ``0``, so the pattern has a single way to match and cannot backtrack badly.
_ZERO = re.compile(rf"^\+?(?:0|(?:(?:0+(?:\.0*)?|\.0+){_UNIT})+)$")


@lru_cache(maxsize=4096)
def parse_duration(text: str) -> timedelta:
    """A duration within bounds; ``0s`` (or ``0``) is zero. Raises ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError("must be a duration string such as 30s, 10m or 1h30m")
    value = text.strip()
    if len(value) > MAX_DURATION_TEXT:
        raise ValueError(f"invalid duration: longer than {MAX_DURATION_TEXT} characters")
    if _ZERO.match(value):
        return timedelta(0)
    delta = _parse_go_duration(value)
    if delta > MAX_DURATION:
        raise ValueError(f"invalid duration {value!r}: must be at most 87600h (10 years)")
    return delta


def duration_ms(text: str) -> int:
    """Milliseconds in a duration string; ``0s`` (or ``0``) is zero, which policies use to disable a timeout.
    A positive duration shorter than a millisecond is one millisecond."""
    delta = parse_duration(text)
    if not delta:
        return 0
    return delta // timedelta(milliseconds=1) or 1


def _check(text: str) -> str:
    parse_duration(text)
    return text


def _check_positive(text: str) -> str:
    if not parse_duration(text):
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return text


Duration = Annotated[str, AfterValidator(_check)]
"""A duration string that may be zero (``0s`` disables a timeout)."""
PositiveDuration = Annotated[str, AfterValidator(_check_positive)]
"""A duration string greater than zero."""
