"""Bearer tokens for writes: rater tokens name the rater, admin tokens may also queue jobs.

Reading is open. With no token in the database, writes are open too (the laptop default,
announced loudly when the server starts). Tokens are random, shown once by
`jumpscope users add`, and stored only as their sha256.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from app.core.errors import AuthError
from app.core.tables import ApiToken, utcnow

TOKEN_BYTES = 32


@dataclass(frozen=True)
class Caller:
    """Who is writing: `name` is None when writes are open (no tokens configured)."""

    name: str | None
    admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_configured(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(ApiToken.id.isnot(None)))))


def add_token(session: Session, name: str, *, admin: bool = False) -> str:
    """Create a token for `name`; returns the token (the only time it is seen)."""
    token = "js_" + secrets.token_urlsafe(TOKEN_BYTES)
    session.add(ApiToken(name=name, token_hash=hash_token(token), admin=admin))
    session.flush()
    return token


def remove_tokens(session: Session, name: str) -> int:
    return session.execute(delete(ApiToken).where(ApiToken.name == name)).rowcount or 0  # type: ignore[attr-defined]


def authenticate(session: Session, authorization: str | None, *, need_admin: bool = False) -> Caller:
    """The caller for a write request, or AuthError (401 no/bad token, 403 not admin)."""
    if not tokens_configured(session):
        return Caller(name=None, admin=True)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "writing needs a token: send 'Authorization: Bearer <token>' (see `jumpscope users add`)")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip())))
    if row is None:
        raise AuthError(401, "unknown token")
    if need_admin and not row.admin:
        raise AuthError(403, f"{row.name!r} is not an admin: queueing jobs needs an admin token")
    session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow()))
    return Caller(name=row.name, admin=row.admin)
