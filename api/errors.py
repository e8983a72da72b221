"""The one place where vor's errors become HTTP responses.

Every error body is ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import errors
from services.runtime import NotConfigured

log = logging.getLogger("vor.api")

STATUS_BY_ERROR: list[tuple[type[errors.VorError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Unauthorized, 401),
    (errors.TransientError, 503),
    (errors.VorError, 422),
]


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


def status_for(exc: errors.VorError) -> int:
    if type(exc) is errors.VorError:
        return 500
    return next(status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls))


def field_of(loc: tuple[int | str, ...], prefix: str = "") -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return ".".join(p for p in (prefix, text) if p) or prefix


def validation_response(exc: ValidationError | RequestValidationError, prefix: str) -> JSONResponse:
    first = exc.errors()[0]
    field = field_of(tuple(first.get("loc", ())), prefix)
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return JSONResponse(
        status_code=422,
        content=error_body(
            "invalid_spec" if prefix == "spec" else "invalid_request", f"{field}: {message}", field
        ),
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.VorError)
    async def vor_error(_: Request, exc: errors.VorError) -> JSONResponse:
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse(
            status_code=status,
            content=error_body(exc.code, exc.message, exc.field),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc, "")

    @app.exception_handler(ValidationError)
    async def spec_invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return validation_response(exc, "spec")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(code, str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable: %s", exc)
        return JSONResponse(
            status_code=503,
            content=error_body(
                "unavailable", "the job store is unreachable for a moment; retry shortly"
            ),
            headers={"Retry-After": "5"},
        )

    for cls in (redis.ConnectionError, redis.TimeoutError, NotConfigured):
        app.add_exception_handler(cls, unavailable)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            status_code=500,
            content=error_body("internal_error", "vor failed unexpectedly; it has been logged"),
        )
