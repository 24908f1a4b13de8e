"""Ratings: one per (study, rater, feature); posting again edits it."""

from __future__ import annotations

import csv
import io

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.auth.deps import WriterDep
from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND, UNAUTHORIZED
from app.core.tables import Rating
from app.ratings import queries
from app.ratings.schemas import RatingIn, RatingOut

router = APIRouter(prefix="/api/v1/saes/{sae}", tags=["ratings"], responses=INVALID)

ANONYMOUS = "anonymous"
"""The rater of a rating posted without a name while no tokens are configured."""

CSV_FIELDS = ["sae", "feature_index", "rater", "label", "note", "study_id", "blinded", "presentation_order",
              "time_spent_ms", "created_at", "updated_at"]  # fmt: skip


def store_rating(session: SessionDep, sae: str, index: int, body: RatingIn, rater: str | None) -> tuple[Rating, bool]:
    """Create or edit the rating; returns (row, created). `rater` from a token wins over the body's."""
    row = get_sae(session, sae)
    check_index(row, index)
    name = rater or body.rater or ANONYMOUS
    key = (Rating.sae_id == row.id, Rating.feature_index == index, Rating.rater == name,
           Rating.study_id == body.study_id)  # fmt: skip
    rating = session.scalar(select(Rating).where(*key).with_for_update())
    created = rating is None
    if rating is None:
        # Two first ratings of the same key can race past the select: insert in a savepoint and,
        # if the other one won, edit its row instead (the unique constraint decides, not a 500).
        try:
            with session.begin_nested():
                rating = Rating(sae_id=row.id, feature_index=index, rater=name, study_id=body.study_id,
                                label=body.label)  # fmt: skip
                session.add(rating)
        except IntegrityError:
            rating = session.scalars(select(Rating).where(*key).with_for_update()).one()
            created = False
    rating.label, rating.note, rating.blinded, rating.shown = body.label, body.note, body.blinded, body.shown
    rating.presentation_order, rating.time_spent_ms = body.presentation_order, body.time_spent_ms
    session.flush()
    session.refresh(rating)
    return rating, created


@router.post(
    "/features/{index}/ratings", status_code=201, response_model=RatingOut,
    responses={**NOT_FOUND, **UNAUTHORIZED, 200: {"model": RatingOut, "description": "An existing rating, edited"}},
    summary="Rate a feature (yes / maybe / no)",
)  # fmt: skip
def post_rating(sae: str, index: int, body: RatingIn, session: SessionDep, caller: WriterDep) -> Response:
    rating, created = store_rating(session, sae, index, body, caller.name)
    out = queries.rating_out(rating, sae)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(
    "/features/{index}/ratings", response_model=list[RatingOut], responses=NOT_FOUND, summary="A feature's ratings"
)
def feature_ratings(sae: str, index: int, session: SessionDep) -> list[RatingOut]:
    return queries.list_ratings(session, sae, index)


@router.get(
    "/ratings.csv", responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}, "description": "All ratings"}},
    response_class=Response, summary="All ratings of an SAE as CSV",
)  # fmt: skip
def ratings_csv(sae: str, session: SessionDep) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for rating in queries.list_ratings(session, sae):
        writer.writerow(rating.model_dump(mode="json"))
    headers = {"Content-Disposition": f'attachment; filename="{sae}-ratings.csv"'}
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
