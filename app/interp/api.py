"""Automated explanations: an SAE's explain attempts (paged, searchable, sortable by score), its score
distributions beside its random baseline's, and a sweep's scores per architecture.

One feature's explanations are part of `GET /api/v1/saes/{sae}/features/{index}` (app.features.api).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.catalog.saes import NotFound
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND
from app.interp import queries
from app.interp.distributions import DEFAULT_BINS, MAX_BINS
from app.interp.schemas import ExplanationList, ExplanationSummary, SweepScores

router = APIRouter(prefix="/api/v1", tags=["explanations"], responses=INVALID)

NO_NUL = r"^[^\x00]*$"
"""Text parameters never hold NUL (Postgres text cannot)."""
Llm = Annotated[
    str | None, Query(max_length=300, pattern=NO_NUL, description="Only explanations by this LLM (ChatBackend name)")
]
Bins = Annotated[int, Query(ge=1, le=MAX_BINS, description="Histogram bins over each score's range")]


@router.get(
    "/saes/{sae}/explanations", response_model=ExplanationList, responses=NOT_FOUND,
    summary="An SAE's explanations: search, sort by score, page",
)  # fmt: skip
def list_explanations(
    sae: str,
    session: SessionDep,
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Text in the explanation (or the raw answer)")
    ] = None,
    sort: queries.ExplanationSort = "feature",
    order: Annotated[
        queries.SortOrder | None, Query(description="Default: asc for feature and created_at, desc for a score")
    ] = None,
    status: Annotated[
        queries.StatusFilter, Query(description="ok: explanations; failed: unreadable answers; error: no answer")
    ] = "ok",
    llm: Llm = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> ExplanationList:
    """Every stored explain attempt of the SAE's features with its scores (null where not computed); attempts
    without an explanation (status failed or error) carry the LLM's raw answer and the reason instead."""
    return queries.list_explanations(
        session, sae, q=q, sort=sort, order=order, status=status, llm=llm, limit=limit, offset=offset
    )


@router.get(
    "/saes/{sae}/explanations/summary", response_model=ExplanationSummary, responses=NOT_FOUND,
    summary="An SAE's score distributions, with its random baseline's",
)  # fmt: skip
def explanation_summary(
    sae: str, session: SessionDep, llm: Llm = None, bins: Bins = DEFAULT_BINS
) -> ExplanationSummary:
    """Per score kind: n, mean, median, a 95% interval of the mean and the histogram over the score's range, of
    each feature's latest explanation; the same for the random-init baseline NAME-random where one is registered
    (`jumpscope explain NAME --baseline random`), else `baseline` is null."""
    return queries.explanation_summary(session, sae, llm=llm, bins=bins)


@router.get(
    "/sweeps/{sweep}/explanations", response_model=SweepScores, responses=NOT_FOUND,
    summary="A sweep's explanation scores per architecture",
)  # fmt: skip
def sweep_explanations(sweep: str, session: SessionDep, llm: Llm = None, bins: Bins = DEFAULT_BINS) -> SweepScores:
    """Scores pooled per architecture over the sweep's SAEs that have explanations (mean with a 95% interval,
    median, histogram), then over their random baselines, and each SAE on its own."""
    out = queries.sweep_scores(session, sweep, llm=llm, bins=bins)
    if out is None:
        raise NotFound(f"no sweep named {sweep!r}")
    return out
