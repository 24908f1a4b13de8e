"""Ratings: one per (study, rater, feature); posting again edits it."""

from __future__ import annotations

import csv
import io

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.auth.deps import WriterDep
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND, UNAUTHORIZED
from app.core.schemas import csv_row
from app.ratings import queries
from app.ratings.schemas import RatingIn, RatingOut
from app.ratings.store import store_rating

router = APIRouter(prefix="/api/v1/saes/{sae}", tags=["ratings"], responses=INVALID)

CSV_FIELDS = ["sae", "feature_index", "rater", "label", "note", "study_id", "blinded", "presentation_order",
              "time_spent_ms", "created_at", "updated_at"]  # fmt: skip


@router.post(
    "/features/{index}/ratings", status_code=201, response_model=RatingOut,
    responses={**NOT_FOUND, **UNAUTHORIZED, 200: {"model": RatingOut, "description": "An existing rating, edited"}},
    summary="Rate a feature (yes / maybe / no)",
)  # fmt: skip
def post_rating(sae: str, index: int, body: RatingIn, session: SessionDep, caller: WriterDep) -> Response:
    stored = store_rating(session, sae=sae, index=index, body=body, rater=caller.name)
    out = queries.get_rating(session, sae, stored.id)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if stored.created else 200)


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
        writer.writerow(csv_row(rating.model_dump(mode="json")))  # text never runs as a spreadsheet formula
    headers = {"Content-Disposition": f'attachment; filename="{sae}-ratings.csv"'}
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
