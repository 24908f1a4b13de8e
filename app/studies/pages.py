"""The rating queue: a rater's way through the live features of one or several SAEs.

- `/saes/{sae}/rate`: one SAE's live features in index order, unrated ones first.
- `/rate?saes=a,b&study=NAME&blind=1`: a study over one or several SAEs (comma-separated or
  repeated `saes`), shuffled per study and rater; `blind=1` hides SAE names and indices.
  `/saes/{sae}/rate?study=NAME&blind=1` is the one-SAE form of it. `after=N` continues after
  position N (skip). `/rate` alone shows a form that builds such a URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.catalog.queries import list_saes
from app.catalog.saes import NotFound, get_sae
from app.core.tables import Rating, SAERow
from app.features.dashboard import FeatureView, NotIndexed, context_mode, load_feature, not_indexed_page
from app.ratings.rater import Identity, identity
from app.studies.order import live_order, next_position
from app.web.params import optional_int, page_session
from app.web.rendering import error_page, render

MAX_QUEUE_SAES = 20

router = APIRouter(include_in_schema=False)


@dataclass(kw_only=True)
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
    """The queue's SAE names in the order given, each once; stops at MAX_QUEUE_SAES + 1 of them (too many)."""
    if path_sae is not None:
        return [path_sae]
    names: dict[str, None] = {}  # ordered and de-duplicated in linear time
    for value in request.query_params.getlist("saes"):
        for part in value.split(","):
            name = part.strip()
            if name:
                names[name] = None
                if len(names) > MAX_QUEUE_SAES:
                    return list(names)
    return list(names)


def _fill(session: Session, queue: Queue) -> Queue:
    """The queue's order and what its rater has already rated of it (in this study)."""
    queue.order = live_order(session, queue.names, queue.study, queue.rater)
    rated = session.execute(
        select(SAERow.name, Rating.feature_index)
        .join(SAERow, SAERow.id == Rating.sae_id)
        .where(SAERow.name.in_(queue.names), Rating.rater == queue.rater, Rating.study_id == queue.study)
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
    after = optional_int(params.get("after", ""), 0, 100_000_000)
    context = context_mode(request)

    def setup(message: str | None = None, status: int = 200) -> HTMLResponse:
        with page_session(request) as session:
            saes = list_saes(session)
        return render(request, "rate_setup.html", {"saes": saes, "chosen": names, "study": study, "blind": blind,
                                                   "message": message}, status)  # fmt: skip

    if not names:
        return await run_in_threadpool(setup)
    if len(names) > MAX_QUEUE_SAES:
        return await run_in_threadpool(setup, f"A queue can hold at most {MAX_QUEUE_SAES} SAEs.", 422)
    if blind and not study:
        return await run_in_threadpool(setup, "A blinded queue needs a study name: ratings are stored under it.", 422)

    def load() -> tuple[Queue, Identity, FeatureView | None, int | None]:
        with page_session(request) as session:
            for name in names:
                if get_sae(session, name).index_run_id is None:
                    raise NotIndexed(name)
            who = identity(request, session)
            queue = Queue(names=names, study=study, blind=blind, rater=who.rater or "",
                          single_path=path_sae is not None)  # fmt: skip
            if who.rater is None:  # ask who rates before showing anything (the order depends on it)
                return queue, who, None, None
            _fill(session, queue)
            if not queue.order:
                return queue, who, None, None
            pos = next_position(queue.order, queue.rated, after if after is not None else -1)
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
