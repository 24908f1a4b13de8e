"""FastAPI dependencies: who writes (a rater or an admin, from the bearer token), and who encodes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.auth.encode_access import encode_client
from app.auth.tokens import Caller, authenticate
from app.core.deps import SessionDep

BEARER = Header(description="Bearer token (`jumpscope users add`); not needed while no token is configured.")


def writer(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization)


def admin(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization, need_admin=True)


WriterDep = Annotated[Caller, Depends(writer)]
AdminDep = Annotated[Caller, Depends(admin)]


def encoder_client(request: Request, session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> str:
    """The encode caller's rate-limit key, after the token rule and the rate limit (app.auth.encode_access)."""
    state = request.app.state
    return encode_client(session, authorization, request.client.host if request.client else None,
                         requires_token=state.settings.encode_requires_token, limiter=state.encode_rate)  # fmt: skip


EncodeClientDep = Annotated[str, Depends(encoder_client)]
