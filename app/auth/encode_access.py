"""Who may encode text, and how often: the token rule and the rate limit of the expensive endpoints.

Encoding runs the model, so it is the one read that costs the server real work. Operators can
require a token for it (`JUMPSCOPE_ENCODE_REQUIRES_TOKEN`, any rater's token) and every caller is
rate limited (`JUMPSCOPE_ENCODE_RATE_LIMIT`): per token holder when a valid token is sent, else
per client address (behind a proxy, run uvicorn with --forwarded-allow-ips so that this is the
client's and not the proxy's).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.auth.rate_limit import RateLimiter
from app.auth.tokens import authenticate, tokens_configured
from app.core.errors import AuthError, TooManyRequests


def encode_client(
    session: Session,
    authorization: str | None,
    client_host: str | None,
    *,
    requires_token: bool,
    limiter: RateLimiter,
) -> str:
    """The caller's rate-limit key ('token:NAME' or 'client:ADDRESS'), or AuthError / TooManyRequests."""
    name: str | None = None
    if requires_token or authorization:
        if requires_token and not tokens_configured(session):
            raise AuthError(
                401, "encoding needs a token on this server and none exists yet: add one with `jumpscope users add`"
            )
        if requires_token and not authorization:
            raise AuthError(401, "encoding needs a token on this server: send 'Authorization: Bearer <token>'")
        name = authenticate(session, authorization).name  # 401 for an unknown token once tokens exist
    key = f"token:{name}" if name else f"client:{client_host or 'unknown'}"
    retry = limiter.hit(key)
    if retry is not None:
        who = f"token {name!r}" if name else "this client"
        raise TooManyRequests(
            f"encode rate limit reached for {who} ({limiter.spec}): retry in {retry:.0f} s", retry_after=retry
        )
    return key
