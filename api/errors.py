"""The one place where vor's errors become HTTP responses.

Every error body is ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from services import errors
from services.errors import NotConfigured

log = logging.getLogger("vor.api")

STATUS_BY_ERROR: list[tuple[type[errors.VorError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.RequestTimedOut, 408),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Unauthorized, 401),
    (errors.TenantQueueFull, 429),
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


METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def record_routes(app: FastAPI, routes: Iterable[BaseRoute]) -> None:
    """Keep the app's routes for ``Allow``: Starlette's 405 names the methods of the first
    route whose path matched, though ``GET`` and ``DELETE`` of one path are two routes."""
    app.state.routes_for_allow = [r for r in routes if isinstance(r, Route | APIRoute)]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    methods = {"OPTIONS"}
    for route in request.app.state.routes_for_allow:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(route.methods or ())
    return sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.VorError)
    async def vor_error(_: Request, exc: errors.VorError) -> JSONResponse:
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        if status == 429 and isinstance(exc, errors.TransientError):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
        if status == 401 and exc.field == "Authorization":
            headers = {"WWW-Authenticate": 'Bearer realm="vor"'}
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
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(code, str(exc.detail)),
            headers=headers or None,
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
