"""Error bodies and the exception -> status mapping shared by every router."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.auth import AuthError
from app.registry import NotFound, RegistryError


class ErrorOut(BaseModel):
    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown SAE or feature"}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or unknown token (only when tokens are configured)"},
    403: {"model": ErrorOut, "description": "The token may not do this"},
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorOut, "description": "No encoder is available"}}


def install(app: FastAPI) -> None:
    """Map domain errors to status codes; never let bad input become a 500."""
    from app.encoder import EncodeError, EncoderUnavailable

    def handler(status: int) -> Any:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(RegistryError, handler(422))
    app.add_exception_handler(EncodeError, handler(422))
    app.add_exception_handler(EncoderUnavailable, handler(503))

    async def auth(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    app.add_exception_handler(AuthError, auth)
