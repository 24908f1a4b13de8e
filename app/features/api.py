"""An SAE's features: the filtered, sorted list and one feature's dashboard data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.catalog.vocab import vocab_for
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND
from app.features import queries
from app.features.schemas import FeatureDetail, FeatureList

router = APIRouter(prefix="/api/v1/saes/{sae}/features", tags=["features"], responses=INVALID)


@router.get("", response_model=FeatureList, responses=NOT_FOUND, summary="List, filter and sort features")
def list_features(
    sae: str,
    session: SessionDep,
    sort: Annotated[
        queries.SortKey,
        Query(
            description="rating: mean label (yes 2, maybe 1, no 0); simulation, detection, fuzzing: that score "
            "of the latest explanation (features without one last)"
        ),
    ] = "index",
    order: queries.SortOrder = "asc",
    min_frequency: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_frequency: Annotated[float | None, Query(ge=0, le=1)] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00]*$",
            description="Text in top examples, rating notes or the latest explanation",
        ),
    ] = None,
    label: Annotated[queries.LabelFilter | None, Query(description="Features with such a rating")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> FeatureList:
    return queries.list_features(
        session, sae, sort=sort, order=order, min_frequency=min_frequency, max_frequency=max_frequency, q=q,
        label=label, limit=limit, offset=offset,
    )  # fmt: skip


@router.get("/{index}", response_model=FeatureDetail, responses=NOT_FOUND, summary="One feature's dashboard data")
def get_feature(sae: str, index: int, session: SessionDep, request: Request) -> FeatureDetail:
    """Statistics, examples, output tokens, ratings and the automated explanations with their scores (newest
    first; attempts that gave no explanation are in `failed_explanations`)."""
    row = get_sae(session, sae)
    check_index(row, index)
    vocab = vocab_for(request.app.state.engine, row.model) if row.model is not None else ()
    return queries.feature_detail(session, sae, index, vocab)
