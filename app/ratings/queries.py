"""Read queries of ratings: per-feature counts and the stored ratings themselves."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Float, Text, case, cast, func, select
from sqlalchemy.orm import Session, defer

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.core.schemas import plain_json
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


def _shown_text() -> Any:
    """The stored `shown` as its JSON text: parsed here (safe_shown), never by the driver, so no stored value
    can fail a read (NaN or 1e400, unpaired surrogates, deep nesting, SQLite text that is not JSON)."""
    return cast(Rating.shown, Text).label("shown_text")


def safe_shown(text: str | None) -> dict[str, Any]:
    """A stored `shown` as served: an object of plain JSON (app.core.schemas.plain_json), {} when unreadable."""
    if text is None:
        return {}
    try:
        value = json.loads(text, parse_constant=lambda _: None)
    except (ValueError, RecursionError):  # not JSON (SQLite), or nested deeper than Python parses
        return {}
    if value is None:
        return {}
    clean = plain_json(value)
    return clean if isinstance(clean, dict) else {"value": clean}


def rating_out(rating: Rating, sae_name: str, shown_text: str | None) -> RatingOut:
    return RatingOut(
        id=rating.id, sae=sae_name, feature_index=rating.feature_index, rater=rating.rater,
        label=rating.label,
        note=rating.note, study_id=rating.study_id, blinded=rating.blinded, shown=safe_shown(shown_text),
        presentation_order=rating.presentation_order, time_spent_ms=rating.time_spent_ms,
        created_at=rating.created_at, updated_at=rating.updated_at,
    )  # fmt: skip


def _ratings(session: Session, sae_name: str, *where: Any) -> list[RatingOut]:
    query = (
        select(Rating, _shown_text())
        .options(defer(Rating.shown))
        .where(*where)
        .order_by(Rating.feature_index, Rating.id)
        .execution_options(populate_existing=True)
    )
    return [rating_out(rating, sae_name, text) for rating, text in session.execute(query)]


def get_rating(session: Session, sae_name: str, rating_id: int) -> RatingOut:
    """One stored rating (of SAE `sae_name`) by id."""
    [out] = _ratings(session, sae_name, Rating.id == rating_id)
    return out


def list_ratings(session: Session, name: str, index: int | None = None) -> list[RatingOut]:
    sae = get_sae(session, name)
    where = [Rating.sae_id == sae.id]
    if index is not None:
        check_index(sae, index)
        where.append(Rating.feature_index == index)
    return _ratings(session, name, *where)
