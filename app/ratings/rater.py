"""Who rates in this browser: a name from the rater cookie (open writes) or the token in the token cookie."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request

from app.auth.names import is_plain_name
from app.auth.tokens import hash_token, tokens_configured
from app.core.tables import ApiToken
from app.web.forms import RATER_COOKIE, TOKEN_COOKIE, from_cookie


@dataclass
class Identity:
    """Who is rating, as far as the page can tell."""

    tokens: bool
    """Tokens are configured: the rater is whoever the token names."""
    rater: str | None
    """The name from the rater cookie, or the name of the token in the token cookie."""


def cookie_rater(request: Request) -> str | None:
    """The rater name of the rater cookie; None without one, or when it breaks the name rule (app.auth.names)."""
    name = from_cookie(request.cookies.get(RATER_COOKIE))
    return name if name is not None and is_plain_name(name) else None


def identity(request: Request, session: Session) -> Identity:
    tokens = tokens_configured(session)
    if not tokens:
        return Identity(tokens=False, rater=cookie_rater(request))
    token = request.cookies.get(TOKEN_COOKIE)
    name = session.scalar(select(ApiToken.name).where(ApiToken.token_hash == hash_token(token))) if token else None
    return Identity(tokens=True, rater=name)


def token_known(session: Session, token: str) -> bool | None:
    """Whether `token` is a configured token; None when no token is configured (writes are open)."""
    if not tokens_configured(session):
        return None
    return session.scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))) is not None
