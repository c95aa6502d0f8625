"""One error shape for every REST failure: ``{title, status, detail, invalid_parameters[{field, reason}]}``.

:class:`Problem` describes it in the OpenAPI document and :func:`error_responses` declares, per route, which
error statuses it answers with. :func:`install` maps every exception the API raises to that shape, including the
framework's own 404 (no route) and 405 (a path without that method, ``Allow`` listing the methods it has).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from isthmus.resources.errors import ResourceValidationError, field_path
from isthmus.store.base import AlreadyExists, Conflict, NotFound


class InvalidParameter(BaseModel):
    field: str = Field(description="the field path, e.g. networking.inbound[0].port or query.offset")
    reason: str


class Problem(BaseModel):
    """The body of every error response."""

    title: str
    status: int
    detail: str
    invalid_parameters: list[InvalidParameter] | None = Field(
        None, description="one entry per invalid field (400 only)"
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input: `invalid_parameters` names each field and the reason",
    401: "No valid credentials (`Authorization: Bearer <user token>`) were presented",
    403: "The credentials do not allow this operation",
    404: "The resource, or its type, does not exist",
    405: "The path exists but not with this method; the `Allow` header lists the methods it has",
    409: "A concurrent change: the resource changed since the version given in `If-Match`, it already exists, "
    "or the control plane has not processed it yet",
    413: "The request body is larger than the control plane accepts",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries for these error statuses, each with the :class:`Problem` body."""
    return {status: {"model": Problem, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class ApiError(Exception):
    def __init__(
        self, status: int, title: str, detail: str = "", fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.fields = status, title, detail, fields or []


def problem(
    status: int,
    title: str,
    detail: str = "",
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"title": title, "status": status, "detail": detail or title}
    if fields:
        body["invalid_parameters"] = fields
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods that the OpenAPI document declares for the request's path.

    A URL names a documented path when its segments match the template's and each path parameter's value fits
    its ``enum`` or integer type (``/meshes/m/dataplanes+insights/n`` is an insight, not a resource of type
    ``dataplanes+insights``). The framework's own ``Allow`` would list only the first matching route's method,
    while GET, PUT and DELETE of one path are separate routes here."""
    segments = request.scope["path"].split("/")
    document = request.app.openapi()
    methods: set[str] = set()
    for template, item in document.get("paths", {}).items():
        parts = template.split("/")
        if len(parts) != len(segments):
            continue
        values: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                if not segment:
                    break
                values[part[1:-1]] = segment
            elif part != segment:
                break
        else:
            for method, operation in item.items():
                if method.upper() in _METHOD_ORDER and _path_values_allowed(operation, values):
                    methods.add(method.upper())
    return sorted(methods, key=_METHOD_ORDER.index)


_METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _path_values_allowed(operation: dict[str, Any], values: dict[str, str]) -> bool:
    for parameter in operation.get("parameters", []):
        if parameter.get("in") != "path":
            continue
        schema = parameter.get("schema", {})
        value = values.get(parameter.get("name", ""), "")
        if "enum" in schema and value not in schema["enum"]:
            return False
        if schema.get("type") == "integer" and not value.lstrip("-").isdecimal():
            return False
    return True


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.fields)

    @app.exception_handler(ResourceValidationError)
    async def _invalid(_: Request, exc: ResourceValidationError) -> JSONResponse:
        fields = [{"field": e.field, "reason": e.reason} for e in exc.errors]
        return problem(400, exc.title, "; ".join(str(e) for e in exc.errors), fields)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(tuple(e.get("loc", ()))[:1] == ("path",) for e in exc.errors()):
            # A path segment that does not fit (an unknown resource type, a serial that is not a number): the URL
            # names no path of this route, as if it had not matched.
            allowed = allowed_methods(request)
            if allowed and request.method not in allowed:
                return problem(405, "Method Not Allowed", headers={"Allow": ", ".join(allowed)})
            return problem(404, "Not Found", f"no such path: {request.scope['path']}")
        fields = [
            {
                "field": field_path(e.get("loc", ())),
                "reason": str(e.get("msg", "invalid")).removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        return problem(400, "Bad request", "; ".join(f"{f['field']}: {f['reason']}" for f in fields), fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        status = exc.status_code
        if status == 405:
            allowed = allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            else:  # e.g. an unknown resource type: no documented path has this URL
                status = 404
                headers.pop("Allow", None)
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        detail = exc.detail if isinstance(exc.detail, str) and status == exc.status_code else title
        if status == 404 and detail == title:
            detail = f"no such path: {request.scope['path']}"
        return problem(status, title, detail, headers=headers)

    @app.exception_handler(NotFound)
    async def _missing(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(AlreadyExists)
    async def _exists(_: Request, exc: AlreadyExists) -> JSONResponse:
        return problem(409, "Conflict", str(exc))
