"""Validation errors that name the field path and the reason."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ResourceValidationError(Exception):
    """A resource was refused; ``errors`` lists every invalid field and why."""

    def __init__(self, errors: Sequence[FieldError], *, title: str = "Resource is not valid") -> None:
        self.errors = list(errors)
        self.title = title
        super().__init__("; ".join(str(e) for e in self.errors) or title)


def field_path(loc: Iterable[int | str], prefix: str = "") -> str:
    """Render a pydantic location tuple as ``networking.inbound[0].port``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "function ")):  # validator wrapper names carry no path
            continue
        else:
            out = f"{out}.{part}" if out else part
    return out


# A validator may name a sub-path at the start of its message ("inbound[1].port: already used"): it is moved
# into the field path so that every error reads ``networking.inbound[1].port: already used``.
_SUBPATH = re.compile(r"^([A-Za-z]\w*(?:\[\d+\])*(?:\.[A-Za-z]\w*(?:\[\d+\])*)*): (.+)$", re.S)


def from_pydantic(exc: ValidationError, prefix: str = "") -> ResourceValidationError:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        path = field_path(err.get("loc", ()), prefix)
        m = _SUBPATH.match(msg)
        if m:
            sub, msg = m.group(1), m.group(2)
            path = f"{path}.{sub}" if path and not sub.startswith("[") else f"{path}{sub}"
        errors.append(FieldError(path, msg))
    return ResourceValidationError(errors)
