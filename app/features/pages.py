"""An SAE's page (its feature table) and the feature dashboard with "try your own text".

Everything is browsable without JavaScript; the JS adds the context switch, "try your own text"
without a reload, keyboard rating and posting ratings to the JSON API.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.catalog.queries import sae_detail, sweeps_of
from app.catalog.saes import NotFound, RegistryError, get_sae
from app.core.tables import SCORE_KINDS
from app.features.dashboard import FeatureView, NotIndexed, context_mode, load_feature, not_indexed_page
from app.features.explanations import has_explanations
from app.features.queries import LabelFilter, SortKey, SortOrder, list_features
from app.ratings.rater import Identity, identity
from app.web.params import page_session, parse_index
from app.web.rendering import error_page, render
from app.web.svg import frequency_histogram_svg

PAGE_SIZES = (25, 50, 100, 200)
SORTS: tuple[str, ...] = get_args(SortKey)
ORDERS: tuple[str, ...] = get_args(SortOrder)
LABELS: tuple[str, ...] = get_args(LabelFilter)
MAX_TRY_CHARS = 2000

router = APIRouter(include_in_schema=False)


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
        t.order = params.get("order", default_order) if params.get("order") in ORDERS else default_order
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
        with page_session(request) as session:
            detail = sae_detail(session, sae)
            features = list_features(
                session, sae, sort=table.sort, order=table.order,  # type: ignore[arg-type]
                min_frequency=table.min_frequency, max_frequency=table.max_frequency, q=table.q or None,
                label=table.label, limit=table.limit, offset=table.offset,  # type: ignore[arg-type]
            )  # fmt: skip
            sweeps = sweeps_of(session, sae)
            explained = has_explanations(session, get_sae(session, sae).id)
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    hist_svg = frequency_histogram_svg(detail.frequency_histogram) if detail.frequency_histogram else None
    return render(request, "sae.html", {"sae": detail, "features": features, "table": table, "hist_svg": hist_svg,
                                        "page_sizes": PAGE_SIZES, "sweeps": sweeps,
                                        "explained": explained, "score_kinds": SCORE_KINDS})  # fmt: skip


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
    from app.auth.encode_access import encode_client
    from app.core.errors import AuthError, TooManyRequests
    from app.encoding.service import encode_texts
    from app.encoding.types import EncodeError, EncoderUnavailable

    def access() -> str:  # the API's token rule and rate limit (the page sends no token)
        state = request.app.state
        with state.sessions() as session, session.begin():
            host = request.client.host if request.client else None
            return encode_client(session, None, host, requires_token=state.settings.encode_requires_token,
                                 limiter=state.encode_rate)  # fmt: skip

    try:
        await run_in_threadpool(access)
        [enc] = await encode_texts(request, name, [text], top_k=1, features=[index], include_bos=True)
    except (EncodeError, RegistryError) as e:
        return Tried(error=str(e))
    except (AuthError, TooManyRequests) as e:
        return Tried(error=str(e.detail))
    except EncoderUnavailable as e:
        return Tried(error=f"no encoder is available: {e}")
    values = [float(v) for v in (enc.dense or {}).get(index) or [0.0] * len(enc.tokens)]
    return Tried(tokens=list(enc.tokens), activations=values, special=list(enc.special), max=max(values, default=0.0))


@dataclass
class Ablated:
    """The outcome of a no-JS ablation on the dashboard: the ablate API's answer, or why there is none."""

    result: Any = None
    """An app.steering.schemas.AblateOut."""
    error: str | None = None


async def _ablate_text(request: Request, name: str, index: int, text: str) -> Ablated:
    """Zero the feature on `text` server-side (app.steering.service.ablate, with the API's token rule and limits)."""
    from pydantic import ValidationError

    from app.auth.encode_access import encode_client
    from app.core.errors import AuthError, InvalidInput, TooManyRequests, Unavailable, validation_message
    from app.core.errors import NotFound as Missing  # catalog's NotFound and the unknown-feature one
    from app.steering.schemas import AblateIn
    from app.steering.service import ablate

    def access() -> str:  # the API's token rule and rate limit (the page sends no token)
        state = request.app.state
        with state.sessions() as session, session.begin():
            host = request.client.host if request.client else None
            return encode_client(session, None, host, requires_token=state.settings.encode_requires_token,
                                 limiter=state.encode_rate)  # fmt: skip

    try:
        body = AblateIn(text=text)
        await run_in_threadpool(access)
        return Ablated(result=await ablate(request, name, index, body))
    except ValidationError as e:
        return Ablated(error=validation_message(e.errors()))
    except (InvalidInput, Missing) as e:
        return Ablated(error=str(e))
    except (AuthError, TooManyRequests) as e:
        return Ablated(error=str(e.detail))
    except Unavailable as e:
        return Ablated(error=f"no model is available: {e}")


@router.get("/saes/{sae}/features/{index}", response_class=HTMLResponse)
async def feature_page(request: Request, sae: str, index: str) -> HTMLResponse:
    number = parse_index(index)
    if number is None:
        return error_page(request, 404, "No such feature", f"{index!r} is not a feature index.")

    def load() -> tuple[FeatureView, Identity]:
        with page_session(request) as session:
            return load_feature(request, session, sae, number, with_ratings=True), identity(request, session)

    try:
        view, who = await run_in_threadpool(load)
    except NotIndexed:
        return not_indexed_page(request, sae)
    except NotFound as e:
        return error_page(request, 404, "Not found", str(e))
    context = context_mode(request)
    text = request.query_params.get("text", "").replace("\x00", "")[:MAX_TRY_CHARS]
    tried = await _try_text(request, sae, number, text) if text.strip() else None
    ablate = request.query_params.get("ablate", "").replace("\x00", "")[:MAX_TRY_CHARS]
    ablated = await _ablate_text(request, sae, number, ablate) if ablate.strip() else None
    return render(request, "feature.html", {
        "view": view, "f": view.detail, "sae": view.sae, "who": who, "context": context, "text": text,
        "tried": tried, "shown": view.shown(context), "next_url": None, "blind": False,
        "ablate": ablate, "ablated": ablated,
        "rendered_at": int(time.time() * 1000), "position": None, "study": "", "score_kinds": SCORE_KINDS,
        "prev_index": number - 1 if number > 0 else None,
        "next_index": number + 1 if number + 1 < view.sae.d_sae else None,
    })  # fmt: skip
