"""The security of HTML forms: CSRF tokens, the same-origin check, the rater cookies and safe redirects.

Writes from HTML forms need a CSRF token (double-submit: the form's field equals the cookie
`render` sets) and are refused when Origin/Referer name another host. The JS path posts JSON to
the REST API instead, which a cross-site form cannot do without a CORS preflight.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "jumpscope_csrf"
RATER_COOKIE = "jumpscope_rater"
TOKEN_COOKIE = "jumpscope_token"
COOKIE_MAX_AGE = 365 * 24 * 3600


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(cookie: str | None, submitted: str | None) -> bool:
    """Double-submit check: the form's token equals the cookie's (constant-time)."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None when unparsable."""
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (scheme, host, port or DEFAULT_PORTS[scheme]) if host else None


def same_origin(origin: str | None, referer: str | None, scheme: str, host: str | None) -> bool:
    """False when Origin (or, without it, Referer) is present and names another origin than the request's own:
    its scheme (http / https, as the server sees the request) and its Host header's host and port."""
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    if not host or claimed == "null":
        return False
    try:
        parts = urlsplit(claimed)
    except ValueError:
        return False
    theirs = _origin(parts.scheme, parts.netloc)
    return theirs is not None and theirs == _origin(scheme, host)


def form_field(form: FormData, name: str) -> str:
    """A text field of a posted form ('' when missing or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Refusal:
    """Why a posted form is refused (HTTP 403)."""

    title: str
    message: str


def refusal(request: Request, form: FormData) -> Refusal | None:
    """None when the form comes from this site: Origin/Referer (when sent) and the CSRF token."""
    headers = request.headers
    if not same_origin(headers.get("origin"), headers.get("referer"), request.url.scheme, headers.get("host")):
        return Refusal("Cross-site request refused",
                       "This form was sent from another site. Open the page here and submit it again.")  # fmt: skip
    if not csrf_matches(request.cookies.get(CSRF_COOKIE), form_field(form, "csrf")):
        return Refusal("Form expired",
                       "The form's security token is missing or wrong (cookies off, or an old page). "
                       "Reload the page and submit it again.")  # fmt: skip
    return None


def cookie_value(text: str) -> str:
    """A cookie-safe form of a name (percent-encoded like JS encodeURIComponent)."""
    return quote(text, safe="")


def from_cookie(value: str | None) -> str | None:
    if not value:
        return None
    text = unquote(value).strip()
    return text[:100] if text and "\x00" not in text else None


def remember(request: Request, response: Response, key: str, value: str) -> None:
    """A rater cookie: readable by the page's JS (it sends the token as Bearer), Lax so a link from elsewhere
    (a study invitation) still knows the rater; writes never trust it alone (CSRF token + Origin check)."""
    response.set_cookie(key, value, max_age=COOKIE_MAX_AGE, samesite="lax", path="/",
                        secure=request.url.scheme == "https")  # fmt: skip


def safe_next(target: str | None, default: str) -> str:
    """A local redirect target (a path on this server), else `default`: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(c in target for c in "\r\n\x00\\"):
        return default
    return target
