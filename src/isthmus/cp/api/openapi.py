"""The control plane's FastAPI application class, whose ``/openapi.json`` declares what the API really answers.

FastAPI documents a 422 on every route with parameters, but this API answers invalid input with 400 and the
:class:`~isthmus.cp.api.errors.Problem` body. The document is adjusted once, when first requested:

* every 422 becomes a 400 with the problem body where the request can be invalid at all (routes declare their
  other errors with ``responses=``);
* every operation declares 405 with its ``Allow`` header (the framework answers it for a method the path lacks);
* every operation declares 401 and 403 and the document its bearer-token scheme (REST API authentication,
  optional because requests from loopback are admin by default), and every operation with a request body
  declares 413 (the body limit).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from isthmus.cp.api.errors import ERROR_DESCRIPTIONS, Problem

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_PROBLEM_REF = "#/components/schemas/Problem"


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _PROBLEM_REF}}},
    }


def _ensure_problem_schema(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" in schemas:
        return
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["Problem"] = schema


def _validates_input(operation: dict[str, Any]) -> bool:
    """Whether a request can be invalid (400): it has a body, a query or a header parameter. A path segment that
    does not fit its parameter is answered 404 or 405, as a URL that names no path (see ``errors.install``)."""
    return "requestBody" in operation or any(p.get("in") != "path" for p in operation.get("parameters", []))


def _not_nullable(parameter: dict[str, Any]) -> None:
    """``str | None = None`` makes FastAPI declare ``anyOf: [string, null]``; a parameter is absent when it is not
    given, never null (a client would send the text "null")."""
    schema = parameter.get("schema", {})
    variants = schema.get("anyOf")
    if not isinstance(variants, list):
        return
    kept = [v for v in variants if v != {"type": "null"}]
    if len(kept) == 1 and len(kept) < len(variants):
        del schema["anyOf"]
        schema.update(kept[0])


def _problems_are_json(responses: dict[str, Any]) -> None:
    """An error body is JSON even on a route whose success is another media type (FastAPI would declare the
    route's ``response_class`` media type for it)."""
    for status, response in responses.items():
        content = response.get("content", {})
        if status.startswith("4") and any(
            media.get("schema", {}).get("$ref") == _PROBLEM_REF for media in content.values()
        ):
            response["content"] = {"application/json": {"schema": {"$ref": _PROBLEM_REF}}}


def tidy(document: dict[str, Any]) -> dict[str, Any]:
    """Make ``document`` (FastAPI's generated OpenAPI) declare the responses the API really gives."""
    _ensure_problem_schema(document)
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).setdefault(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "a user token (isthmus generate user-token) or, for its own Dataplane, a data-plane "
            "token; requests from loopback need none unless --api-localhost-is-admin=false",
        },
    )
    document.setdefault("security", [{}, {"bearerAuth": []}])  # optional: loopback is admin by default
    for item in document.get("paths", {}).values():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for parameter in operation.get("parameters", []):
                _not_nullable(parameter)
            responses: dict[str, Any] = operation.setdefault("responses", {})
            _problems_are_json(responses)
            if responses.pop("422", None) is not None and _validates_input(operation):
                responses.setdefault("400", _problem_response(400))
            responses.setdefault("401", _problem_response(401))
            responses.setdefault("403", _problem_response(403))
            if "requestBody" in operation:
                responses.setdefault("413", _problem_response(413))
            allowed = _problem_response(405)
            allowed["headers"] = {
                "Allow": {"description": "the methods this path has", "schema": {"type": "string"}}
            }
            responses.setdefault("405", allowed)
    schemas = document.get("components", {}).get("schemas", {})
    used = repr(document.get("paths", {}))
    if "/HTTPValidationError'" not in used:
        schemas.pop("HTTPValidationError", None)
        if "/ValidationError'" not in used:
            schemas.pop("ValidationError", None)
    return document


class ControlPlaneApi(FastAPI):
    """A FastAPI application whose OpenAPI document is :func:`tidy`."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = tidy(super().openapi())
        return self.openapi_schema
