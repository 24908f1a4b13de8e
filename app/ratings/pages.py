"""The HTML forms of rating: a rating posted without JavaScript, and who rates in this browser (/identity).

Both are form posts: refused (403) unless they come from this site with the page's CSRF token,
then answered with a redirect (303) to the form's `next` (a local path). The JS path posts
ratings to the JSON API instead (app.ratings.api).
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from app.auth.names import NAME_RULE, is_plain_name
from app.auth.tokens import authenticate
from app.catalog.saes import NotFound
from app.core.errors import AuthError, validation_message
from app.core.schemas import JSON_MAX_DEPTH
from app.core.tables import NOTE_MAX_CHARS
from app.ratings.rater import token_known
from app.ratings.schemas import SHOWN_MAX_CHARS, RatingIn
from app.ratings.store import ANONYMOUS, store_rating
from app.web.forms import (
    RATER_COOKIE,
    TOKEN_COOKIE,
    cookie_value,
    form_field,
    from_cookie,
    refusal,
    remember,
    safe_next,
)
from app.web.params import optional_int, page_session, parse_index
from app.web.rendering import error_page

router = APIRouter(include_in_schema=False)

SHOWN_FORM_MAX_CHARS = 10 * SHOWN_MAX_CHARS
"""The form's `shown` text is not even parsed beyond this (the event loop parses it)."""


def _refused(request: Request, form: FormData) -> HTMLResponse | None:
    refused = refusal(request, form)
    return None if refused is None else error_page(request, 403, refused.title, refused.message)


@router.post("/saes/{sae}/features/{index}/rate", response_class=HTMLResponse)
async def rate_form(request: Request, sae: str, index: str) -> Response:
    """Store a rating posted by the HTML form (no JavaScript), then redirect (303) to `next`."""
    form = await request.form()
    refused = _refused(request, form)
    if refused is not None:
        return refused
    number = parse_index(index)
    if number is None:
        return error_page(request, 404, "No such feature", f"{index!r} is not a feature index.")
    note = form_field(form, "note")
    if len(note) > NOTE_MAX_CHARS:
        return error_page(request, 422, "Note too long",
                          f"Notes are limited to {NOTE_MAX_CHARS} characters; this one has {len(note)}.")  # fmt: skip
    shown_text = form_field(form, "shown") or "{}"
    if len(shown_text) > SHOWN_FORM_MAX_CHARS:
        return error_page(request, 422, "Rating not saved",
                          f"shown: limited to {SHOWN_MAX_CHARS:,} characters of JSON")  # fmt: skip
    try:
        shown = json.loads(shown_text)
    except ValueError:
        shown = {}
    except RecursionError:
        return error_page(request, 422, "Rating not saved",
                          f"shown: objects and arrays may nest at most {JSON_MAX_DEPTH} deep")  # fmt: skip
    rendered = optional_int(form_field(form, "rendered_at"), 0, 10**14)
    spent = int(time.time() * 1000) - rendered if rendered is not None else None
    token_field = form_field(form, "token").strip()
    rater_field = form_field(form, "rater").strip()
    if not rater_field and not (token_field or request.cookies.get(TOKEN_COOKIE)):
        remembered = from_cookie(request.cookies.get(RATER_COOKIE))
        if remembered is not None and not is_plain_name(remembered):  # a name from before the rule
            message = f"The name this browser remembers is not allowed: enter a name ({NAME_RULE})."
            return error_page(request, 422, "Name needed", message)
        rater_field = remembered or ""
    try:
        body = RatingIn(
            rater=rater_field or None, label=form_field(form, "label"), note=note,
            study_id=form_field(form, "study_id"), blinded=form_field(form, "blinded") in ("1", "true", "on"),
            shown=shown if isinstance(shown, dict) else {},
            presentation_order=optional_int(form_field(form, "presentation_order"), 0, 10_000_000),
            time_spent_ms=spent if spent is not None and 0 <= spent <= 86_400_000 else None,
        )  # fmt: skip
    except ValidationError as e:
        return error_page(request, 422, "Rating not saved", validation_message(e.errors()))

    def store() -> tuple[str, bool]:
        with page_session(request) as session:
            token = token_field or request.cookies.get(TOKEN_COOKIE) or ""
            caller = authenticate(session, f"Bearer {token}" if token else None)
            stored = store_rating(session, sae=sae, index=number, body=body, rater=caller.name)
            return stored.rater, caller.name is not None

    try:
        rater, by_token = await run_in_threadpool(store)
    except AuthError as e:
        return error_page(request, e.status, "Rating not saved", e.detail, need_token=True)
    except NotFound as e:
        return error_page(request, 404, "Not found", str(e))
    target = safe_next(form_field(form, "next"), f"/saes/{sae}/features/{number}#rating")
    response = RedirectResponse(target, status_code=303)
    if by_token and token_field:
        remember(request, response, TOKEN_COOKIE, token_field)
    elif not by_token and rater != ANONYMOUS:
        remember(request, response, RATER_COOKIE, cookie_value(rater))
    return response


@router.post("/identity", response_class=HTMLResponse)
async def identity_form(request: Request) -> Response:
    """Remember who rates in this browser: a name (open writes) or a token (tokens configured)."""
    form = await request.form()
    refused = _refused(request, form)
    if refused is not None:
        return refused
    target = safe_next(form_field(form, "next"), "/rate")
    response = RedirectResponse(target, status_code=303)
    if form_field(form, "forget"):
        response.delete_cookie(RATER_COOKIE, path="/")
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response
    name = form_field(form, "rater").strip()
    token = form_field(form, "token").strip()

    def check() -> bool | None:
        with page_session(request) as session:
            return token_known(session, token)

    known = await run_in_threadpool(check)
    if known is None:
        if not is_plain_name(name):
            return error_page(request, 422, "Name needed", f"Enter a name: {NAME_RULE}.")
        remember(request, response, RATER_COOKIE, cookie_value(name))
    elif known:
        remember(request, response, TOKEN_COOKIE, token)
    else:
        message = "This server needs a rater token (`jumpscope users add NAME`); that one is not known."
        return error_page(request, 401, "Unknown token", message)
    return response
