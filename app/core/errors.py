"""The error types every domain raises, their one-line bodies, and the exception -> status mapping.

Domains subclass these (catalog's NotFound, encoding's EncodeError, ...) so that the server maps
them without importing any domain: NotFound -> 404, InvalidInput -> 422, Unavailable -> 503,
AuthError -> its own 401 / 403, TooManyRequests -> 429.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class InvalidInput(ValueError):
    """A request that cannot be honoured as given: HTTP 422 with the message."""


class NotFound(ValueError):
    """An unknown name or index: HTTP 404."""


class Unavailable(RuntimeError):
    """A service the request needs is down (e.g. the encoder): HTTP 503."""


class TooManyRequests(Exception):
    """A caller over its rate limit, or more waiting work than the server takes: HTTP 429 with Retry-After."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class AuthError(Exception):
    """A write without a valid token (401) or without the right (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ErrorOut(BaseModel):
    detail: str


INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "Invalid input: one line saying why"},
    413: {"model": ErrorOut, "description": "Request body over JUMPSCOPE_MAX_REQUEST_BYTES"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown SAE or feature"}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or unknown token (only when tokens are configured)"},
    403: {"model": ErrorOut, "description": "The token may not do this"},
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorOut, "description": "No encoder is available"}}
BUSY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Over the rate limit, or the server is busy: retry after Retry-After s"}
}


def install(app: FastAPI) -> None:
    """Map domain errors to status codes; never let bad input become a 500."""

    def handler(status: int) -> Any:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(InvalidInput, handler(422))
    app.add_exception_handler(Unavailable, handler(503))

    async def auth(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    app.add_exception_handler(AuthError, auth)

    async def busy(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TooManyRequests)
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse({"detail": exc.detail}, status_code=429, headers=headers)

    app.add_exception_handler(TooManyRequests, busy)

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = 422 if exc.status_code == 400 else exc.status_code  # an unparsable body is invalid input
        return JSONResponse({"detail": str(exc.detail)}, status_code=status, headers=getattr(exc, "headers", None))

    app.add_exception_handler(StarletteHTTPException, http_error)


def validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line: 'body.text: String should have at least 1 character; ...'."""
    parts = []
    for error in errors:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body" or len(error.get("loc", ())) == 1)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)[:2000] or "invalid request"
