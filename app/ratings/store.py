"""Storing a rating: one per (study, rater, feature); posting again edits it (the API and the no-JS form).

A rating lands whole or not at all: each write is one statement that carries every field (an insert that
yields to an existing row, then an update of that row), inside the caller's transaction. No savepoint:
on SQLite (pysqlite) releasing a savepoint opened before any write commits it, which once left a
half-written rating behind when a later step failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.core.tables import Rating, utcnow
from app.ratings.schemas import RatingIn

ANONYMOUS = "anonymous"
"""The rater of a rating posted without a name while no tokens are configured."""

KEY = ("study_id", "rater", "sae_id", "feature_index")
"""The columns of the unique constraint uq_ratings_study_rater_feature."""


@dataclass(frozen=True)
class Stored:
    """A stored rating: its id, under which rater, and whether it was created (else an existing one was edited)."""

    id: int
    rater: str
    created: bool


def store_rating(session: Session, *, sae: str, index: int, body: RatingIn, rater: str | None) -> Stored:
    """Create or edit the rating; `rater` from a token wins over the body's."""
    row = get_sae(session, sae)
    check_index(row, index)
    name = rater or body.rater or ANONYMOUS
    key: dict[str, Any] = {"study_id": body.study_id, "rater": name, "sae_id": row.id, "feature_index": index}
    values: dict[str, Any] = {
        "label": body.label, "note": body.note, "blinded": body.blinded, "shown": body.shown,
        "presentation_order": body.presentation_order, "time_spent_ms": body.time_spent_ms,
    }  # fmt: skip
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    # Two first ratings of the same key may race: the unique constraint decides, and the loser edits the
    # winner's row (the insert waits for the other transaction on Postgres; SQLite has one writer at a time).
    for _ in range(3):
        now = utcnow()
        created = session.scalar(
            insert(Rating)
            .values(**key, **values, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=list(KEY))
            .returning(Rating.id)
        )
        if created is not None:
            return Stored(created, name, True)
        edited = session.scalar(
            update(Rating)
            .where(*(getattr(Rating, column) == value for column, value in key.items()))
            .values(**values, updated_at=now)
            .returning(Rating.id)
            .execution_options(synchronize_session=False)
        )
        if edited is not None:
            return Stored(edited, name, False)
    raise RuntimeError("the rating was removed while it was being stored three times over")
