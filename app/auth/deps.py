"""FastAPI dependencies for writes: who the caller is (a rater or an admin), from the bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from app.auth.tokens import Caller, authenticate
from app.core.deps import SessionDep

BEARER = Header(description="Bearer token (`jumpscope users add`); not needed while no token is configured.")


def writer(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization)


def admin(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization, need_admin=True)


WriterDep = Annotated[Caller, Depends(writer)]
AdminDep = Annotated[Caller, Depends(admin)]
