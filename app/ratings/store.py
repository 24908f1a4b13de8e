"""Storing a rating: one per (study, rater, feature); posting again edits it (the API and the no-JS form)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.core.tables import Rating
from app.ratings.schemas import RatingIn

ANONYMOUS = "anonymous"
"""The rater of a rating posted without a name while no tokens are configured."""


def store_rating(session: Session, *, sae: str, index: int, body: RatingIn, rater: str | None) -> tuple[Rating, bool]:
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
