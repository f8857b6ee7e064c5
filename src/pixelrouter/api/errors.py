"""Every failure leaves as the SPEC §5 envelope; a bug is a 500 with an error id, no traceback."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from pixelrouter.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    PixelrouterError,
    ServiceUnavailable,
)
from pixelrouter.store import is_unreachable

from .responses import OrjsonResponse

log = logging.getLogger("pixelrouter.api")

_HTTP_TYPES = {
    400: "invalid_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    405: "invalid_request",
    413: "payload_too_large",
    415: "invalid_request",
}


DATABASE_RETRY_AFTER_S = 2


def unexpected_error(exc: BaseException, where: str) -> PixelrouterError:
    """What a client is told of an exception nobody expected: a 503 with `Retry-After` when
    the database is out of reach, else a 500 with an error id (logged with the traceback)."""
    if is_unreachable(exc):
        log.warning("the database is out of reach (%s): %s", where, type(exc).__name__)
        return ServiceUnavailable(
            "The database is not answering; try again in a few seconds.",
            metadata={"reason": "database_unavailable", "retry_after": DATABASE_RETRY_AFTER_S},
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )
    error_id = secrets.token_hex(8)
    log.error("internal error %s (%s)", error_id, where, exc_info=exc)
    return InternalError(
        f"Internal server error (error id {error_id}). It has been logged.",
        metadata={"error_id": error_id},
    )


def error_response(error: PixelrouterError) -> OrjsonResponse:
    return OrjsonResponse(error.envelope(), status_code=error.status, headers=error.headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts: list[str] = []
    for item in exc.errors()[:3]:
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        if item.get("type") == "json_invalid":
            return "The request body is not valid JSON."
        if item.get("type") == "missing":
            parts.append(f"{location} is required")
        else:
            message = str(item.get("msg", "is invalid"))
            parts.append(f"{location}: {message}" if location else message)
    return "Invalid request: " + "; ".join(parts) + "." if parts else "Invalid request."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PixelrouterError)
    async def _known(request: Request, exc: PixelrouterError) -> OrjsonResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        fields: list[Any] = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:10]]
        return error_response(
            InvalidRequest(_describe_validation(exc), metadata={"fields": fields})
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        if exc.status_code == 404:
            error: PixelrouterError = NotFound(f"No such endpoint: {request.url.path}")
        else:
            error = PixelrouterError(str(exc.detail), headers=dict(exc.headers or {}))
            error.status = exc.status_code
            error.error_type = _HTTP_TYPES.get(exc.status_code, "unmapped")
        return error_response(error)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> OrjsonResponse:
        return error_response(unexpected_error(exc, f"{request.method} {request.url.path}"))
