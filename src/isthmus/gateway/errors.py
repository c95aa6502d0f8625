"""Kong's Admin API error bodies: ``{"code", "name", "message", "fields"}`` with Kong's codes and statuses.

The codes, names and HTTP statuses are those of Kong's ``kong/db/errors.lua`` and ``kong/api/endpoints.lua``.
"""

from __future__ import annotations

import json
from typing import Any

# code: (name, HTTP status)
CODES: dict[int, tuple[str, int]] = {
    1: ("invalid primary key", 400),
    2: ("schema violation", 400),
    3: ("primary key violation", 400),
    4: ("foreign key violation", 400),
    5: ("unique constraint violation", 409),
    6: ("not found", 404),
    7: ("invalid offset", 400),
    8: ("database error", 500),
    9: ("invalid size", 400),
    10: ("invalid unique", 400),
    11: ("invalid options", 400),
    12: ("operation unsupported", 405),
    13: ("foreign keys unresolved", 400),
    14: ("invalid declarative configuration", 400),
    19: ("referenced by others", 400),
    20: ("invalid search query", 400),
}

SCHEMA_VIOLATION = 2
PRIMARY_KEY_VIOLATION = 3
FOREIGN_KEY_VIOLATION = 4
UNIQUE_VIOLATION = 5
NOT_FOUND = 6
INVALID_OFFSET = 7
INVALID_SIZE = 9
INVALID_OPTIONS = 11
OPERATION_UNSUPPORTED = 12


class KongError(Exception):
    """An Admin API error with Kong's body; ``status`` is the HTTP status Kong answers it with."""

    def __init__(self, code: int, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name, self.status = CODES[code]
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "name": self.name, "message": self.message}
        if self.fields is not None:
            body["fields"] = self.fields
        return body


class Plain(Exception):
    """A Kong error that is only ``{"message": ...}`` (404 of a path or entity, 405 of a method)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flatten(fields: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.extend(_flatten(value, name))
        elif isinstance(value, list):
            for item in value:
                if item is None:
                    continue
                if isinstance(item, dict):
                    out.extend(_flatten(item, name))
                else:
                    out.append(str(item) if key == "@entity" else f"{name}: {item}")
        else:
            out.append(f"{name}: {value}" if key != "@entity" else str(value))
    return out


def schema_violation(fields: dict[str, Any]) -> KongError:
    """Kong's message: ``schema violation (host: required field missing)`` or ``2 schema violations (a; b)``."""
    parts = _flatten(fields)
    if len(parts) == 1:
        message = f"schema violation ({parts[0]})"
    else:
        message = f"{len(parts)} schema violations ({'; '.join(parts)})"
    return KongError(SCHEMA_VIOLATION, message, fields)


def lua_table(values: dict[str, Any]) -> str:
    """A key as Kong prints it in messages: ``{name="x"}``, ``{id="..."}``, nested tables, ``null``."""
    parts = []
    for key in sorted(values):
        value = values[key]
        if value is None:
            text = "null"
        elif isinstance(value, dict):
            text = lua_table(value)
        else:
            text = json.dumps(value)
        parts.append(f"{key}={text}")
    return "{" + ",".join(parts) + "}"


def unique_violation(values: dict[str, Any]) -> KongError:
    return KongError(UNIQUE_VIOLATION, f"UNIQUE violation detected on '{lua_table(values)}'", values)


def foreign_key_violation(field: str, key: dict[str, Any], collection: str) -> KongError:
    return KongError(
        FOREIGN_KEY_VIOLATION,
        f"the foreign key '{lua_table(key)}' does not reference an existing '{collection}' entity.",
        {field: key},
    )


def referenced_by(child: str, parent: str) -> KongError:
    """Deleting ``parent`` that ``child`` entities still reference (Kong's restricted foreign key)."""
    return KongError(
        FOREIGN_KEY_VIOLATION,
        f"an existing '{child}' entity references this '{parent}' entity",
        {"@referenced_by": child},
    )
