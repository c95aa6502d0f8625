"""Private keys in Mesh documents: hidden from every response, kept on a ``GET`` -> edit -> ``PUT`` round trip.

A ``provided`` CA backend may carry its key inline (``conf.key.inline`` / ``conf.key.inlineString``). The API
shows such a key as ``[redacted]``; a ``PUT`` whose data source is exactly ``[redacted]`` keeps what the stored
Mesh has at the same place (same backend name, same part, same field), and is refused naming the field when
the stored Mesh has nothing there to keep (see docs/resources/mesh.md, "Private keys").
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Mapping
from typing import Any

from isthmus.resources.errors import FieldError, ResourceValidationError
from isthmus.resources.provided_ca import REDACTED
from isthmus.xds.translate.secrets import redact_private_keys

__all__ = ["redact_mesh_document", "restore_redacted_keys"]

_INLINE_FIELDS = ("inline", "inlineString")
_PARTS = ("cert", "key")


def _provided_backends(spec: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(index, backend)`` for each backend of ``spec.mtls.backends`` that is an object with an object
    ``conf``."""
    mtls = spec.get("mtls") if isinstance(spec, Mapping) else None
    backends = mtls.get("backends") if isinstance(mtls, Mapping) else None
    if not isinstance(backends, list):
        return []
    return [(i, b) for i, b in enumerate(backends) if isinstance(b, dict) and isinstance(b.get("conf"), dict)]


def _holds_a_key(field: str, value: str) -> bool:
    if field == "inline":
        try:
            value = base64.b64decode(value, validate=True).decode(errors="replace")
        except (binascii.Error, ValueError):
            return False
    return "PRIVATE KEY" in value


def redact_mesh_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` (a Mesh document; it shares its nested values with the stored record, so it is left
    alone) with every inline ``conf.key`` of a CA backend, any inline ``conf.cert`` that holds a private key,
    and any other string holding a PEM private key replaced by ``[redacted]``."""
    doc = copy.deepcopy(doc)
    for _, backend in _provided_backends(doc):
        for part in _PARTS:
            source = backend["conf"].get(part)
            if not isinstance(source, dict):
                continue
            for field in _INLINE_FIELDS:
                value = source.get(field)
                if isinstance(value, str) and (part == "key" or _holds_a_key(field, value)):
                    source[field] = REDACTED
    redacted: dict[str, Any] = redact_private_keys(doc)
    return redacted


def restore_redacted_keys(body: Any, stored: Mapping[str, Any] | None) -> None:
    """Replace, in ``body`` (a Mesh document about to be validated), each inline data source that is exactly
    ``[redacted]`` by the stored Mesh's value at the same place (``stored`` is the stored spec, or None);
    ResourceValidationError naming each field that has no stored value to keep."""
    stored_backends = {
        b.get("name"): b["conf"] for _, b in _provided_backends(stored) if isinstance(b.get("name"), str)
    }
    errors: list[FieldError] = []
    for i, backend in _provided_backends(body):
        for part in _PARTS:
            source = backend["conf"].get(part)
            if not isinstance(source, dict):
                continue
            for field in _INLINE_FIELDS:
                if source.get(field) != REDACTED:
                    continue
                kept = stored_backends.get(backend.get("name"), {}).get(part)
                value = kept.get(field) if isinstance(kept, Mapping) else None
                if isinstance(value, str) and value != REDACTED:
                    source[field] = value
                else:
                    errors.append(
                        FieldError(
                            f"mtls.backends[{i}].conf.{part}.{field}",
                            f"is {REDACTED!r}, the placeholder the API shows instead of a private key, but the"
                            f" stored Mesh has no {part}.{field} for backend {backend.get('name')!r} to keep:"
                            " give the key itself",
                        )
                    )
    if errors:
        raise ResourceValidationError(errors)
