"""One error shape for every REST failure: ``{title, status, detail, invalid_parameters[{field, reason}]}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from isthmus.resources.errors import ResourceValidationError, field_path
from isthmus.store.base import AlreadyExists, Conflict, NotFound


class ApiError(Exception):
    def __init__(
        self, status: int, title: str, detail: str = "", fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.fields = status, title, detail, fields or []


def problem(
    status: int, title: str, detail: str = "", fields: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"title": title, "status": status, "detail": detail or title}
    if fields:
        body["invalid_parameters"] = fields
    return JSONResponse(body, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.fields)

    @app.exception_handler(ResourceValidationError)
    async def _invalid(_: Request, exc: ResourceValidationError) -> JSONResponse:
        fields = [{"field": e.field, "reason": e.reason} for e in exc.errors]
        return problem(400, exc.title, "; ".join(str(e) for e in exc.errors), fields)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": field_path(e.get("loc", ())), "reason": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        return problem(400, "Bad request", "; ".join(f"{f['field']}: {f['reason']}" for f in fields), fields)

    @app.exception_handler(NotFound)
    async def _missing(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(AlreadyExists)
    async def _exists(_: Request, exc: AlreadyExists) -> JSONResponse:
        return problem(409, "Conflict", str(exc))
