"""Rendering the HTML pages: the Jinja environment, `render`, `error_page`, and `mount` for /static.

Templates (autoescaped) live in the top-level `templates/` folder; `static/` holds the CSS and
the small vanilla JS (no CDN, works offline). Every page gets the security headers below and a
CSRF cookie (see app.web.forms). The domains' page routers are included by app.server.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.assets import asset_dir
from app.core.tables import NOTE_MAX_CHARS
from app.web.formats import fmt_frequency, fmt_number, fmt_value, fmt_when, fmt_width
from app.web.forms import CSRF_COOKIE, new_csrf_token
from app.web.params import with_params
from app.web.svg import activation_histogram_svg
from app.web.tokens import SHORT_RADIUS, display_token, tokens_html

TEMPLATES = asset_dir("templates")
STATIC = asset_dir("static")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _static_version() -> str:
    stamps = [int(p.stat().st_mtime) for p in STATIC.glob("*") if p.is_file()] if STATIC.is_dir() else []
    return format(max(stamps, default=0) % 1_000_000_007, "x")


_VERSION = _static_version()


def static_url(name: str) -> str:
    """A static file's URL with a version stamp (so browsers refetch it after an upgrade)."""
    return f"/static/{name}?v={_VERSION}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )  # fmt: skip
    env.globals.update(
        static=static_url, tokens_html=tokens_html, fmt_value=fmt_value, display_token=display_token,
        activation_histogram_svg=activation_histogram_svg, with_params=with_params, SHORT_RADIUS=SHORT_RADIUS,
        NOTE_MAX_CHARS=NOTE_MAX_CHARS, width_label=fmt_width,
    )  # fmt: skip
    env.filters.update(freq=fmt_frequency, num=fmt_number, when=fmt_when, json=lambda value: json.dumps(value))
    return env


templates = Jinja2Templates(env=_env())


def render(request: Request, name: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    """A page from a template, with security headers and a CSRF cookie (set when missing)."""
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    fresh = len(csrf) < 32 or len(csrf) > 64
    if fresh:
        csrf = new_csrf_token()
    ctx = {"request": request, "csrf": csrf, "version": request.app.version, **context}
    response = templates.TemplateResponse(request, name, ctx, status_code=status, headers=SECURITY_HEADERS)
    if fresh:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")  # fmt: skip
    return response


def error_page(request: Request, status: int, title: str, message: str, **extra: Any) -> HTMLResponse:
    """The error template: a title, one message, and what `extra` adds (a command to run, a token form)."""
    return render(request, "error.html", {"title": title, "message": message, "status": status, **extra}, status)


def mount(app: FastAPI) -> None:
    """Serve `/static`, and answer browsers with an HTML 404 page (instead of JSON) outside the API."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    previous = app.exception_handlers.get(StarletteHTTPException)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        browser = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and browser and not path.startswith(("/api/", "/static/")):
            return error_page(request, 404, "Page not found", f"There is no page at {path}.")
        if previous is not None:
            reply = previous(request, exc)
            return await reply if inspect.isawaitable(reply) else reply
        return Response(str(exc.detail), status_code=exc.status_code)

    app.add_exception_handler(StarletteHTTPException, http_error)
