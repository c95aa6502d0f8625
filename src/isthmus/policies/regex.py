"""Regular expressions as Envoy runs them: RE2 syntax and Envoy's program-size limit.

Every user regex that reaches Envoy (a ``safe_regex``) is checked here at apply, and the control plane's own
evaluations of those regexes (``explain``) use the same engine, so what ``apply`` accepts is what Envoy accepts
and what ``explain`` says is what Envoy does. Compiled patterns are kept in a bounded cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

# Envoy refuses (NACKs) a ``safe_regex`` whose RE2 program size exceeds the runtime key
# ``re2.max_program_size.error_level``, 100 unless the bootstrap raises it (checked against Envoy 1.40:
# ``/x`` + 94 letters, program size 100, is accepted; one letter more is refused).
ENVOY_MAX_PROGRAM_SIZE = 100
CACHE_SIZE = 4096


class RegexError(ValueError):
    """A pattern Envoy would refuse; the message is the reason."""


@dataclass(frozen=True)
class _Compiled:
    regexp: Any  # re2._Regexp (the package has no type information)
    program_size: int


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every syntax error on stderr
    return options


def _reason(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else str(exc)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


@lru_cache(maxsize=CACHE_SIZE)
def _compile(pattern: str) -> _Compiled | str:
    try:
        regexp = re2.compile(pattern, _options())
    except re2.error as exc:
        return f"is not a valid regular expression (RE2, as Envoy runs it): {_reason(exc)}"
    size = int(regexp.programsize)
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (
            f"is too complex for Envoy: its RE2 program size is {size}, the limit is {ENVOY_MAX_PROGRAM_SIZE} "
            "(simplify it, e.g. fewer or smaller bounded repetitions such as {0,200})"
        )
    return _Compiled(regexp, size)


def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse ``pattern`` as a ``safe_regex`` (RE2 syntax, program size), or None."""
    compiled = _compile(pattern)
    return compiled if isinstance(compiled, str) else None


def compile_regex(pattern: str) -> Any:
    """The compiled RE2 pattern (cached); :class:`RegexError` when Envoy would refuse it."""
    compiled = _compile(pattern)
    if isinstance(compiled, str):
        raise RegexError(compiled)
    return compiled.regexp


def fullmatch(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` entirely, as Envoy's ``safe_regex`` matchers decide.

    A pattern Envoy would refuse never matches (it cannot be in a configuration Envoy accepted)."""
    compiled = _compile(pattern)
    if isinstance(compiled, str):
        return False
    return compiled.regexp.fullmatch(text) is not None
