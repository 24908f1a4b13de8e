"""FastAPI dependencies: settings, database sessions, the encoder and the caller of a write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.auth import Caller, authenticate
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; committed when the endpoint returns, rolled back on error."""
    with request.app.state.sessions() as session, session.begin():
        yield session


def get_encoder(request: Request) -> Any:
    return request.app.state.encoder


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

BEARER = Header(description="Bearer token (`jumpscope users add`); not needed while no token is configured.")


def writer(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization)


def admin(session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> Caller:
    return authenticate(session, authorization, need_admin=True)


WriterDep = Annotated[Caller, Depends(writer)]
AdminDep = Annotated[Caller, Depends(admin)]
