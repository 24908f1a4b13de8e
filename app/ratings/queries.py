"""Read queries of ratings: per-feature counts and the stored ratings themselves."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.core.tables import Rating
from app.ratings.schemas import RatingOut, RatingSummary


def rating_columns(sae_id: int) -> Any:
    """Per-feature rating counts as a subquery (feature_index, yes, maybe, no, total, score)."""
    score = func.avg(case((Rating.label == "yes", 2.0), (Rating.label == "maybe", 1.0), else_=0.0))
    return (
        select(
            Rating.feature_index.label("feature_index"),
            func.sum(case((Rating.label == "yes", 1), else_=0)).label("yes"),
            func.sum(case((Rating.label == "maybe", 1), else_=0)).label("maybe"),
            func.sum(case((Rating.label == "no", 1), else_=0)).label("no"),
            func.count().label("total"),
            cast(score, Float).label("score"),
        )
        .where(Rating.sae_id == sae_id)
        .group_by(Rating.feature_index)
        .subquery()
    )


def rating_summary(session: Session, sae_id: int, index: int) -> RatingSummary:
    counts = dict(
        session.execute(
            select(Rating.label, func.count())
            .where(Rating.sae_id == sae_id, Rating.feature_index == index)
            .group_by(Rating.label)
        ).all()
    )
    return RatingSummary(
        yes=counts.get("yes", 0), maybe=counts.get("maybe", 0), no=counts.get("no", 0), total=sum(counts.values())
    )


def rating_out(rating: Rating, sae_name: str) -> RatingOut:
    return RatingOut(
        id=rating.id, sae=sae_name, feature_index=rating.feature_index, rater=rating.rater,
        label=rating.label,
        note=rating.note, study_id=rating.study_id, blinded=rating.blinded, shown=rating.shown or {},
        presentation_order=rating.presentation_order, time_spent_ms=rating.time_spent_ms,
        created_at=rating.created_at, updated_at=rating.updated_at,
    )  # fmt: skip


def list_ratings(session: Session, name: str, index: int | None = None) -> list[RatingOut]:
    sae = get_sae(session, name)
    query = select(Rating).where(Rating.sae_id == sae.id)
    if index is not None:
        check_index(sae, index)
        query = query.where(Rating.feature_index == index)
    return [rating_out(r, name) for r in session.scalars(query.order_by(Rating.feature_index, Rating.id))]
