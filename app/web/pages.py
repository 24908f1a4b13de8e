"""The HTML pages: SAEs, an SAE's feature table, the feature dashboard, the rating queue and jobs.

Pages read the same queries as the REST API and render Jinja templates (autoescaped) from the
top-level `templates/` folder; `static/` holds the CSS and the small vanilla JS (no CDN, works
offline). Everything is browsable without JavaScript; the JS adds the context switch, "try
your own text" without a reload, keyboard rating and posting ratings to the JSON API.

Writes from HTML forms (the no-JS rating form and the rater identity form) need a CSRF token
(double-submit cookie) and are refused when Origin/Referer name another host. The JS path
posts JSON to the REST API, which a cross-site form cannot do without a CORS preflight.

Rating queue URLs:
- `/saes/{sae}/rate`: one SAE's live features in index order, unrated ones first.
- `/rate?saes=a,b&study=NAME&blind=1`: a study over one or several SAEs (comma-separated or
  repeated `saes`), shuffled per study and rater; `blind=1` hides SAE names and indices.
  `/saes/{sae}/rate?study=NAME&blind=1` is the one-SAE form of it. `after=N` continues after
  position N (skip). `/rate` alone shows a form that builds such a URL.
"""

from __future__ import annotations

import inspect
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.tokens import AuthError, authenticate, hash_token, tokens_configured
from app.catalog import queries as catalog_queries
from app.catalog.saes import NotFound, RegistryError, get_sae
from app.catalog.vocab import vocab_for
from app.core.assets import asset_dir
from app.core.errors import validation_message
from app.core.tables import NOTE_MAX_CHARS, SAE, ApiToken, Example, Feature, Job, Rating
from app.features import queries as feature_queries
from app.features.schemas import FeatureDetail
from app.ratings import queries as rating_queries
from app.ratings.api import ANONYMOUS, store_rating
from app.ratings.schemas import RatingIn, RatingOut
from app.sweeps import results as sweep_results
from app.web import helpers as ph

TEMPLATES = asset_dir("templates")
STATIC = asset_dir("static")

SHORT_RADIUS = 8
"""Tokens either side of the max token in the short context view."""
PAGE_SIZES = (25, 50, 100, 200)
SORTS = ("index", "frequency", "max_activation", "rating")
LABELS = ("yes", "maybe", "no", "unrated")
MAX_QUEUE_SAES = 20
MAX_TRY_CHARS = 2000
UI_VERSION = "pages-1"
RUNNING = ("queued", "running")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


def _static_version() -> str:
    stamps = [int(p.stat().st_mtime) for p in STATIC.glob("*") if p.is_file()] if STATIC.is_dir() else []
    return format(max(stamps, default=0) % 1_000_000_007, "x")


_VERSION = _static_version()


def static_url(name: str) -> str:
    """A static file's URL with a version stamp (so browsers refetch it after an upgrade)."""
    return f"/static/{name}?v={_VERSION}"


def fmt_frequency(value: float | None) -> str:
    """A firing frequency for people: a percentage, or scientific notation when tiny."""
    if value is None or not math.isfinite(value):
        return "\u2014"
    if value == 0:
        return "0"
    return f"{value * 100:.3g}%" if value >= 1e-3 else f"{value:.2e}"


def fmt_number(value: Any, digits: int = 3) -> str:
    """A metric with a few significant digits; missing values as an em dash."""
    if isinstance(value, bool) or value is None:
        return "\u2014"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, f".{digits}g") if math.isfinite(value) else "\u2014"
    return str(value)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )  # fmt: skip
    env.globals.update(
        static=static_url, tokens_html=ph.tokens_html, fmt_value=ph.fmt_value, display_token=ph.display_token,
        activation_histogram_svg=ph.activation_histogram_svg, with_params=with_params, SHORT_RADIUS=SHORT_RADIUS,
        NOTE_MAX_CHARS=NOTE_MAX_CHARS, width_label=_width_label,
    )  # fmt: skip
    env.filters.update(freq=fmt_frequency, num=fmt_number, when=fmt_when, json=lambda value: json.dumps(value))
    return env


def with_params(request: Request, **changes: Any) -> str:
    """This page's path and query with some parameters replaced (None removes one)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    params += [(k, v) for k, v in changes.items() if v is not None]
    return request.url.path + (f"?{urlencode(params)}" if params else "")


def fmt_when(value: Any) -> str:
    """A timestamp to the second, in UTC."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else "\u2014"


def _width_label(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)


templates = Jinja2Templates(env=_env())


def mount(app: FastAPI) -> None:
    """Add the pages, `/static`, and HTML (instead of JSON) 404s for browsers outside the API."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    previous = app.exception_handlers.get(StarletteHTTPException)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        browser = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and browser and not path.startswith(("/api/", "/static/")):
            return error_page(request, 404, "Page not found", f"There is no page at {path}.")
        if previous is not None:
            reply = previous(request, exc)
            return await reply if inspect.isawaitable(reply) else reply  # type: ignore[no-any-return]
        return Response(str(exc.detail), status_code=exc.status_code)

    app.add_exception_handler(StarletteHTTPException, http_error)


# --- rendering ------------------------------------------------------------------------------------------------------


def render(request: Request, name: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    """A page from a template, with security headers and a CSRF cookie (set when missing)."""
    csrf = request.cookies.get(ph.CSRF_COOKIE) or ""
    fresh = len(csrf) < 32 or len(csrf) > 64
    if fresh:
        csrf = ph.new_csrf_token()
    ctx = {"request": request, "csrf": csrf, "version": request.app.version, **context}
    response = templates.TemplateResponse(request, name, ctx, status_code=status, headers=SECURITY_HEADERS)
    if fresh:
        response.set_cookie(ph.CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")  # fmt: skip
    return response


def error_page(request: Request, status: int, title: str, message: str, **extra: Any) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message, "status": status, **extra}, status)


def not_indexed_page(request: Request, name: str) -> HTMLResponse:
    return error_page(
        request, 404, f"{name} is not indexed yet",
        "Its features have no statistics or examples yet. Index it first:", command=f"jumpscope index {name}",
        sae_name=name,
    )  # fmt: skip


@contextmanager
def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session, session.begin():
        yield session


def _parse_index(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


# --- rater identity -------------------------------------------------------------------------------------------------


@dataclass
class Identity:
    """Who is rating, as far as the page can tell."""

    tokens: bool
    """Tokens are configured: the rater is whoever the token names."""
    rater: str | None
    """The name from the rater cookie, or the name of the token in the token cookie."""


def identity(request: Request, session: Session) -> Identity:
    tokens = tokens_configured(session)
    if not tokens:
        return Identity(tokens=False, rater=ph.from_cookie(request.cookies.get(ph.RATER_COOKIE)))
    token = request.cookies.get(ph.TOKEN_COOKIE)
    name = session.scalar(select(ApiToken.name).where(ApiToken.token_hash == hash_token(token))) if token else None
    return Identity(tokens=True, rater=name)


def _set_cookie(request: Request, response: Response, key: str, value: str) -> None:
    """A rater cookie: readable by the page's JS (it sends the token as Bearer), Lax so a link from elsewhere
    (a study invitation) still knows the rater; writes never trust it alone (CSRF token + Origin check)."""
    response.set_cookie(key, value, max_age=ph.COOKIE_MAX_AGE, samesite="lax", path="/",
                        secure=request.url.scheme == "https")  # fmt: skip


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _check_form(request: Request, form: FormData) -> HTMLResponse | None:
    """403 page unless the form comes from this site: Origin/Referer (when sent) and the CSRF token."""
    headers = request.headers
    if not ph.same_origin(headers.get("origin"), headers.get("referer"), headers.get("host")):
        return error_page(request, 403, "Cross-site request refused",
                          "This form was sent from another site. Open the page here and submit it again.")  # fmt: skip
    if not ph.csrf_matches(request.cookies.get(ph.CSRF_COOKIE), _field(form, "csrf")):
        return error_page(request, 403, "Form expired",
                          "The form's security token is missing or wrong (cookies off, or an old page). "
                          "Reload the page and submit it again.")  # fmt: skip
    return None


# --- the SAEs -------------------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    with _session(request) as session:
        saes = catalog_queries.list_saes(session)
    return render(request, "index.html", {"saes": saes})


@dataclass
class TableQuery:
    """The feature table's filters, sort and page, parsed leniently from a GET form."""

    sort: str = "index"
    order: str = "asc"
    min_frequency: float | None = None
    max_frequency: float | None = None
    label: str | None = None
    q: str = ""
    limit: int = 50
    offset: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TableQuery:
        t = cls()
        sort = params.get("sort", "index")
        t.sort = sort if sort in SORTS else "index"
        default_order = "asc" if t.sort == "index" else "desc"
        t.order = params.get("order", default_order) if params.get("order") in ("asc", "desc") else default_order
        t.min_frequency = t._frequency(params.get("min_frequency", ""), "minimum frequency")
        t.max_frequency = t._frequency(params.get("max_frequency", ""), "maximum frequency")
        label = params.get("label", "")
        t.label = label if label in LABELS else None
        t.q = params.get("q", "").replace("\x00", "").strip()[:200]
        limit = params.get("limit", "")
        t.limit = int(limit) if limit.isdigit() and int(limit) in PAGE_SIZES else 50
        offset = params.get("offset", "")
        t.offset = min(int(offset), 100_000_000) if offset.isascii() and offset.isdigit() and len(offset) < 12 else 0
        return t

    def _frequency(self, text: str, what: str) -> float | None:
        text = text.strip()
        if not text:
            return None
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value <= 1):
            self.problems.append(f"The {what} must be a number from 0 to 1 (or a percentage): ignored {text!r}.")
            return None
        return value

    def url(self, name: str, **changes: Any) -> str:
        """This table's URL with some settings changed (defaults left out)."""
        values = {"sort": self.sort, "order": self.order, "min_frequency": self.min_frequency,
                  "max_frequency": self.max_frequency, "label": self.label, "q": self.q, "limit": self.limit,
                  "offset": self.offset, **changes}  # fmt: skip
        defaults = {"sort": "index", "order": "asc" if values["sort"] == "index" else "desc", "limit": 50,
                    "offset": 0}  # fmt: skip
        kept = {k: v for k, v in values.items() if v not in (None, "") and defaults.get(k) != v}
        return f"/saes/{name}" + (f"?{urlencode(kept)}" if kept else "")

    def sort_url(self, name: str, column: str) -> str:
        """Sort by `column`; a second click flips the order."""
        if column == self.sort:
            return self.url(name, order="desc" if self.order == "asc" else "asc", offset=0)
        return self.url(name, sort=column, order="asc" if column == "index" else "desc", offset=0)


@router.get("/saes/{sae}", response_class=HTMLResponse)
def sae_page(request: Request, sae: str) -> HTMLResponse:
    table = TableQuery.parse(request.query_params)
    try:
        with _session(request) as session:
            detail = catalog_queries.sae_detail(session, sae)
            features = feature_queries.list_features(
                session, sae, sort=table.sort, order=table.order,  # type: ignore[arg-type]
                min_frequency=table.min_frequency, max_frequency=table.max_frequency, q=table.q or None,
                label=table.label, limit=table.limit, offset=table.offset,  # type: ignore[arg-type]
            )  # fmt: skip
            sweeps = sweep_results.sweeps_of(session, sae)
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    hist_svg = ph.frequency_histogram_svg(detail.frequency_histogram) if detail.frequency_histogram else None
    return render(request, "sae.html", {"sae": detail, "features": features, "table": table, "hist_svg": hist_svg,
                                        "page_sizes": PAGE_SIZES, "sweeps": sweeps})  # fmt: skip


# --- one feature ----------------------------------------------------------------------------------------------------


@dataclass
class FeatureView:
    """Everything a dashboard shows about one feature."""

    sae: SAE
    detail: FeatureDetail
    top_ids: list[int]
    band_ids: list[int]
    ratings: list[RatingOut]

    @property
    def scale(self) -> float:
        return self.detail.max_activation if self.detail.max_activation > 0 else 1.0

    def shown(self, context: str, **extra: Any) -> dict[str, Any]:
        """What a rater sees of this feature, recorded with the rating."""
        return {"view": "feature", "top_example_ids": self.top_ids, "band_example_ids": self.band_ids,
                "examples": len(self.top_ids) + len(self.band_ids), "context": context,
                "context_radius": SHORT_RADIUS if context == "short" else None, "ui_version": UI_VERSION,
                **extra}  # fmt: skip


class NotIndexed(Exception):
    """The SAE has no index yet."""


def load_feature(request: Request, session: Session, name: str, index: int, *, with_ratings: bool) -> FeatureView:
    sae = get_sae(session, name)
    catalog_queries.check_index(sae, index)
    if sae.index_run_id is None:
        raise NotIndexed(name)
    vocab = vocab_for(request.app.state.engine, sae.model) if sae.model is not None else ()
    detail = feature_queries.feature_detail(session, name, index, vocab)
    rows = session.execute(
        select(Example.id, Example.band)
        .where(Example.run_id == sae.index_run_id, Example.feature_index == index)
        .order_by(Example.band, Example.rank)
    ).all()
    ratings = rating_queries.list_ratings(session, name, index)[-50:] if with_ratings else []
    return FeatureView(sae=sae, detail=detail, top_ids=[r.id for r in rows if r.band == -1],
                       band_ids=[r.id for r in rows if r.band >= 0], ratings=ratings)  # fmt: skip


def _context(request: Request) -> str:
    return "full" if request.query_params.get("context") == "full" else "short"


@dataclass
class Tried:
    """The outcome of a no-JS 'try your own text'."""

    tokens: list[str] = field(default_factory=list)
    activations: list[float] = field(default_factory=list)
    special: list[bool] = field(default_factory=list)
    max: float = 0.0
    error: str | None = None


async def _try_text(request: Request, name: str, index: int, text: str) -> Tried:
    """The no-JS 'try your own text': encode server-side (the JS calls the encode API instead)."""
    from app.encoding.api import _target
    from app.encoding.encoder import EncodeError, EncoderUnavailable

    try:
        target = await run_in_threadpool(_target, request, name)
        [enc] = await request.app.state.encoder.encode(target, [text], top_k=1, features=[index], include_bos=True)
    except (EncodeError, RegistryError) as e:
        return Tried(error=str(e))
    except EncoderUnavailable as e:
        return Tried(error=f"no encoder is available: {e}")
    values = [float(v) for v in (enc.dense or {}).get(index) or [0.0] * len(enc.tokens)]
    return Tried(tokens=list(enc.tokens), activations=values, special=list(enc.special), max=max(values, default=0.0))


@router.get("/saes/{sae}/features/{index}", response_class=HTMLResponse)
async def feature_page(request: Request, sae: str, index: str) -> HTMLResponse:
    number = _parse_index(index)
    if number is None:
        return error_page(request, 404, "No such feature", f"{index!r} is not a feature index.")

    def load() -> tuple[FeatureView, Identity]:
        with _session(request) as session:
            return load_feature(request, session, sae, number, with_ratings=True), identity(request, session)

    try:
        view, who = await run_in_threadpool(load)
    except NotIndexed:
        return not_indexed_page(request, sae)
    except NotFound as e:
        return error_page(request, 404, "Not found", str(e))
    context = _context(request)
    text = request.query_params.get("text", "").replace("\x00", "")[:MAX_TRY_CHARS]
    tried = await _try_text(request, sae, number, text) if text.strip() else None
    return render(request, "feature.html", {
        "view": view, "f": view.detail, "sae": view.sae, "who": who, "context": context, "text": text,
        "tried": tried, "shown": view.shown(context), "next_url": None, "blind": False,
        "rendered_at": int(time.time() * 1000), "position": None, "study": "",
        "prev_index": number - 1 if number > 0 else None,
        "next_index": number + 1 if number + 1 < view.sae.d_sae else None,
    })  # fmt: skip


# --- rating: the no-JS form -----------------------------------------------------------------------------------------


def _optional_int(text: str, lo: int, hi: int) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 16 and lo <= int(text) <= hi else None


@router.post("/saes/{sae}/features/{index}/rate", response_class=HTMLResponse)
async def rate_form(request: Request, sae: str, index: str) -> Response:
    """Store a rating posted by the HTML form (no JavaScript), then redirect (303) to `next`."""
    form = await request.form()
    refused = _check_form(request, form)
    if refused is not None:
        return refused
    number = _parse_index(index)
    if number is None:
        return error_page(request, 404, "No such feature", f"{index!r} is not a feature index.")
    note = _field(form, "note")
    if len(note) > NOTE_MAX_CHARS:
        return error_page(request, 422, "Note too long",
                          f"Notes are limited to {NOTE_MAX_CHARS} characters; this one has {len(note)}.")  # fmt: skip
    try:
        shown = json.loads(_field(form, "shown") or "{}")
    except ValueError:
        shown = {}
    rendered = _optional_int(_field(form, "rendered_at"), 0, 10**14)
    spent = int(time.time() * 1000) - rendered if rendered is not None else None
    rater_field = _field(form, "rater").strip() or ph.from_cookie(request.cookies.get(ph.RATER_COOKIE)) or ""
    token_field = _field(form, "token").strip()
    try:
        body = RatingIn(
            rater=rater_field or None, label=_field(form, "label"), note=note,  # type: ignore[arg-type]
            study_id=_field(form, "study_id"), blinded=_field(form, "blinded") in ("1", "true", "on"),
            shown=shown if isinstance(shown, dict) else {},
            presentation_order=_optional_int(_field(form, "presentation_order"), 0, 10_000_000),
            time_spent_ms=spent if spent is not None and 0 <= spent <= 86_400_000 else None,
        )  # fmt: skip
    except ValidationError as e:
        return error_page(request, 422, "Rating not saved", validation_message(e.errors()))

    def store() -> tuple[str, bool]:
        with _session(request) as session:
            token = token_field or request.cookies.get(ph.TOKEN_COOKIE) or ""
            caller = authenticate(session, f"Bearer {token}" if token else None)
            rating, _ = store_rating(session, sae, number, body, caller.name)
            return rating.rater, caller.name is not None

    try:
        rater, by_token = await run_in_threadpool(store)
    except AuthError as e:
        return error_page(request, e.status, "Rating not saved", e.detail, need_token=True)
    except NotFound as e:
        return error_page(request, 404, "Not found", str(e))
    target = ph.safe_next(_field(form, "next"), f"/saes/{sae}/features/{number}#rating")
    response = RedirectResponse(target, status_code=303)
    if by_token and token_field:
        _set_cookie(request, response, ph.TOKEN_COOKIE, token_field)
    elif not by_token and rater != ANONYMOUS:
        _set_cookie(request, response, ph.RATER_COOKIE, ph.cookie_value(rater))
    return response


@router.post("/identity", response_class=HTMLResponse)
async def identity_form(request: Request) -> Response:
    """Remember who rates in this browser: a name (open writes) or a token (tokens configured)."""
    form = await request.form()
    refused = _check_form(request, form)
    if refused is not None:
        return refused
    target = ph.safe_next(_field(form, "next"), "/rate")
    response = RedirectResponse(target, status_code=303)
    if _field(form, "forget"):
        response.delete_cookie(ph.RATER_COOKIE, path="/")
        response.delete_cookie(ph.TOKEN_COOKIE, path="/")
        return response
    name = _field(form, "rater").strip()
    token = _field(form, "token").strip()

    def check() -> bool | None:
        with _session(request) as session:
            if not tokens_configured(session):
                return None
            return session.scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))) is not None

    known = await run_in_threadpool(check)
    if known is None:
        if not name or len(name) > 100 or "\x00" in name:
            return error_page(request, 422, "Name needed", "Enter a name of 1 to 100 characters.")
        _set_cookie(request, response, ph.RATER_COOKIE, ph.cookie_value(name))
    elif known:
        _set_cookie(request, response, ph.TOKEN_COOKIE, token)
    else:
        message = "This server needs a rater token (`jumpscope users add NAME`); that one is not known."
        return error_page(request, 401, "Unknown token", message)
    return response


# --- the rating queue -----------------------------------------------------------------------------------------------


@dataclass
class Queue:
    """A rater's queue over one or several SAEs, optionally a (blinded) study."""

    names: list[str]
    study: str
    blind: bool
    rater: str
    single_path: bool
    """Built from /saes/{sae}/rate (links keep that form)."""
    order: list[tuple[str, int]] = field(default_factory=list)
    rated: set[tuple[str, int]] = field(default_factory=set)

    def url(self, **extra: Any) -> str:
        params: dict[str, Any] = {} if self.single_path else {"saes": ",".join(self.names)}
        if self.study:
            params["study"] = self.study
        if self.blind:
            params["blind"] = 1
        params.update({k: v for k, v in extra.items() if v is not None})
        base = f"/saes/{self.names[0]}/rate" if self.single_path else "/rate"
        return base + (f"?{urlencode(params, safe=',')}" if params else "")

    @property
    def done(self) -> int:
        return len(self.rated)


def _queue_names(request: Request, path_sae: str | None) -> list[str]:
    if path_sae is not None:
        return [path_sae]
    names: list[str] = []
    for value in request.query_params.getlist("saes"):
        for name in value.split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
    return names


_ORDERS: OrderedDict[tuple[Any, ...], list[tuple[str, int]]] = OrderedDict()
_ORDERS_LOCK = threading.Lock()
ORDER_CACHE_SIZE = 32


def _queue_order(session: Session, names: list[str], study: str, rater: str) -> list[tuple[str, int]]:
    """The live features of the SAEs in the rater's order, cached per (index runs, study, rater)."""
    runs = tuple(session.execute(select(SAE.name, SAE.index_run_id).where(SAE.name.in_(names)).order_by(SAE.name)))
    key = (str(session.get_bind().engine.url), runs, study, rater)
    with _ORDERS_LOCK:
        if key in _ORDERS:
            _ORDERS.move_to_end(key)
            return _ORDERS[key]
    items = session.execute(
        select(SAE.name, Feature.index)
        .join(Feature, Feature.run_id == SAE.index_run_id)
        .where(SAE.name.in_(names), Feature.fire_count > 0)
    ).all()
    order = ph.queue_order([(n, i) for n, i in items], shuffle=bool(study), study=study, rater=rater)
    with _ORDERS_LOCK:
        _ORDERS[key] = order
        while len(_ORDERS) > ORDER_CACHE_SIZE:
            _ORDERS.popitem(last=False)
    return order


def _build_queue(session: Session, names: list[str], study: str, blind: bool, rater: str, single: bool) -> Queue:
    queue = Queue(names=names, study=study, blind=blind, rater=rater, single_path=single)
    queue.order = _queue_order(session, names, study, rater)
    rated = session.execute(
        select(SAE.name, Rating.feature_index)
        .join(SAE, SAE.id == Rating.sae_id)
        .where(SAE.name.in_(names), Rating.rater == rater, Rating.study_id == study)
    ).all()
    live = set(queue.order)
    queue.rated = {(n, i) for n, i in rated if (n, i) in live}
    return queue


@router.get("/rate", response_class=HTMLResponse)
async def rate_page(request: Request) -> HTMLResponse:
    return await _queue_page(request, None)


@router.get("/saes/{sae}/rate", response_class=HTMLResponse)
async def sae_rate_page(request: Request, sae: str) -> HTMLResponse:
    return await _queue_page(request, sae)


async def _queue_page(request: Request, path_sae: str | None) -> HTMLResponse:
    names = _queue_names(request, path_sae)
    params = request.query_params
    study = params.get("study", "").replace("\x00", "").strip()[:100]
    blind = params.get("blind", "") in ("1", "true", "on", "yes")
    after = _optional_int(params.get("after", ""), 0, 100_000_000)
    context = _context(request)

    def setup(message: str | None = None, status: int = 200) -> HTMLResponse:
        with _session(request) as session:
            saes = catalog_queries.list_saes(session)
        return render(request, "rate_setup.html", {"saes": saes, "chosen": names, "study": study, "blind": blind,
                                                   "message": message}, status)  # fmt: skip

    if not names:
        return await run_in_threadpool(setup)
    if len(names) > MAX_QUEUE_SAES:
        return await run_in_threadpool(setup, f"A queue can hold at most {MAX_QUEUE_SAES} SAEs.", 422)
    if blind and not study:
        return await run_in_threadpool(setup, "A blinded queue needs a study name: ratings are stored under it.", 422)

    def load() -> tuple[Queue, Identity, FeatureView | None, int | None]:
        with _session(request) as session:
            for name in names:
                if get_sae(session, name).index_run_id is None:
                    raise NotIndexed(name)
            who = identity(request, session)
            if who.rater is None:  # ask who rates before showing anything (the order depends on it)
                return Queue(names, study, blind, "", path_sae is not None), who, None, None
            queue = _build_queue(session, names, study, blind, who.rater, path_sae is not None)
            if not queue.order:
                return queue, who, None, None
            pos = ph.next_position(queue.order, queue.rated, after if after is not None else -1)
            if pos is None:
                return queue, who, None, None
            name, index = queue.order[pos]
            return queue, who, load_feature(request, session, name, index, with_ratings=False), pos

    try:
        queue, who, view, pos = await run_in_threadpool(load)
    except NotIndexed as e:
        return not_indexed_page(request, str(e))
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    ctx: dict[str, Any] = {"queue": queue, "who": who, "view": view, "position": pos, "context": context,
                           "blind": blind, "study": study}  # fmt: skip
    if view is not None and pos is not None:
        ctx.update(
            f=view.detail, sae=view.sae, next_url=queue.url(after=pos, context="full" if context == "full" else None),
            skip_url=queue.url(after=pos, context="full" if context == "full" else None),
            rendered_at=int(time.time() * 1000), text="", tried=None, prev_index=None, next_index=None,
            shown={**view.shown(context), "view": "queue", "position": pos, "queue_size": len(queue.order),
                   "saes_in_queue": len(names)},
        )  # fmt: skip
    return render(request, "rate.html", ctx)


# --- jobs -----------------------------------------------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    with _session(request) as session:
        jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(100)).all()
        rows = [{"id": j.id, "kind": j.kind, "status": j.status, "progress": j.progress, "message": j.message,
                 "created_at": j.created_at, "name": (j.params or {}).get("name") or (j.params or {}).get("sae")}
                for j in jobs]  # fmt: skip
    return render(request, "jobs.html", {"jobs": rows})


def _curve(metrics: list[Any], key: str) -> list[tuple[float, float]]:
    points = []
    for row in metrics:
        if not isinstance(row, dict):
            continue
        x, y = row.get("step"), row.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(y, bool):
            points.append((float(x), float(y)))
    return points


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    number = _parse_index(job_id)
    with _session(request) as session:
        job = session.get(Job, number) if number is not None and number < 2**31 else None
        if job is None:
            return error_page(request, 404, "No such job", f"There is no job {job_id}.")
        metrics = list(job.metrics or [])
        view = {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress or 0.0,
                "message": job.message, "params": job.params or {}, "result": job.result or {}, "error": job.error,
                "attempts": job.attempts, "worker": job.worker, "created_at": job.created_at,
                "started_at": job.started_at, "finished_at": job.finished_at}  # fmt: skip
    charts = [ph.line_chart_svg(_curve(metrics, key), label) for key, label in
              (("loss", "loss"), ("l0", "L0"), ("fvu", "FVU"))]  # fmt: skip
    last = metrics[-1] if metrics and isinstance(metrics[-1], dict) else {}
    return render(request, "job.html", {"job": view, "charts": charts, "last": last, "points": len(metrics),
                                        "refresh": view["status"] in RUNNING})  # fmt: skip


# --- sweeps ---------------------------------------------------------------------------------------------------------


@router.get("/compare", response_class=HTMLResponse)
def compare_list_page(request: Request) -> HTMLResponse:
    with _session(request) as session:
        sweeps = sweep_results.list_sweeps(session)
    return render(request, "compare_list.html", {"sweeps": sweeps})


@router.get("/compare/{sweep}", response_class=HTMLResponse)
def compare_page(request: Request, sweep: str) -> HTMLResponse:
    with _session(request) as session:
        doc = sweep_results.sweep_doc(session, sweep)
    if doc is None:
        message = f"There is no sweep named {sweep!r}. All sweeps are on /compare."
        return error_page(request, 404, "No such sweep", message)
    charts = sweep_results.plots(doc)
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for row in doc["points"]:
        by_arch.setdefault(row["architecture"], []).append(row)
    return render(request, "compare.html", {"sweep": doc, "charts": charts, "by_arch": by_arch,
                                            "plot_labels": sweep_results.PLOTS})  # fmt: skip
