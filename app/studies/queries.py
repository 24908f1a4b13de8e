"""Read queries of rating studies: a study's ratings, one row each with its SAE, every study with counts, and the
automated explanations and scores of a study's features (app.interp's store).

A study is the `study_id` its ratings carry ('' is "outside any study" and is never a study).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.core.tables import Rating, SAERow
from app.interp.store import latest_explanations, scores_of


@dataclass(frozen=True)
class RatingRow:
    """One rating of a study, unblinded: which SAE and feature, who said what."""

    study: str
    sae: str
    """The SAE's registered name."""
    architecture: str
    """The SAE's architecture (jumprelu, relu, topk, gated, ...)."""
    feature_index: int
    rater: str
    label: str
    """yes, maybe or no."""
    note: str
    blinded: bool
    """The rater did not see which SAE the feature came from."""
    presentation_order: int | None
    time_spent_ms: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StudyCounts:
    """A study at a glance: how many ratings, features, raters and SAEs it holds."""

    name: str
    ratings: int
    features: int
    """Distinct (SAE, feature index) pairs rated."""
    raters: int
    saes: list[str]
    """The rated SAEs' names, sorted."""
    architectures: list[str]
    """Their architectures, sorted, each once."""
    blinded: bool
    """Some ratings were made blinded."""
    first_rated_at: datetime
    last_rated_at: datetime
    """When the last rating was made or edited."""


ROW_COLUMNS = (
    SAERow.name, SAERow.architecture, Rating.feature_index, Rating.rater, Rating.label, Rating.note, Rating.blinded,
    Rating.presentation_order, Rating.time_spent_ms, Rating.created_at, Rating.updated_at,
)  # fmt: skip
"""The columns of a RatingRow after its study, in order."""


def rating_rows(session: Session, study: str) -> list[RatingRow]:
    """Every rating of `study`, by SAE name, feature index and rater; [] for an unknown study (or '')."""
    if not study or "\x00" in study:  # no rating carries NUL (Postgres text cannot hold it)
        return []
    query = (
        select(*ROW_COLUMNS)
        .join(SAERow, SAERow.id == Rating.sae_id)
        .where(Rating.study_id == study)
        .order_by(SAERow.name, Rating.feature_index, Rating.rater)
    )
    return [RatingRow(study, *row) for row in session.execute(query)]


def study_exists(session: Session, study: str) -> bool:
    """Whether some rating carries the study name `study` ('' never names a study)."""
    if not study or "\x00" in study:
        return False
    return session.scalar(select(Rating.id).where(Rating.study_id == study).limit(1)) is not None


def list_studies(session: Session) -> list[StudyCounts]:
    """Every study with its counts, the most recently rated first."""
    blinded = func.max(case((Rating.blinded, 1), else_=0))
    raters = func.count(func.distinct(Rating.rater))
    first, last = func.min(Rating.created_at), func.max(Rating.updated_at)
    totals = session.execute(
        select(Rating.study_id, func.count(), raters, blinded, first, last)
        .where(Rating.study_id != "")
        .group_by(Rating.study_id)
    ).all()
    if not totals:
        return []
    pairs = (
        select(Rating.study_id, Rating.sae_id, Rating.feature_index).where(Rating.study_id != "").distinct().subquery()
    )
    features: dict[str, int] = dict(
        session.execute(select(pairs.c.study_id, func.count()).group_by(pairs.c.study_id)).all()
    )
    saes: dict[str, list[tuple[str, str]]] = {}
    for study, name, arch in session.execute(
        select(Rating.study_id, SAERow.name, SAERow.architecture)
        .join(SAERow, SAERow.id == Rating.sae_id)
        .where(Rating.study_id != "")
        .distinct()
        .order_by(Rating.study_id, SAERow.name)
    ):
        saes.setdefault(study, []).append((name, arch))
    out = []
    for study, ratings, n_raters, any_blinded, first_at, last_at in totals:
        names = saes.get(study, [])
        counts = StudyCounts(
            name=study, ratings=ratings, features=features.get(study, 0), raters=n_raters,
            saes=[name for name, _ in names], architectures=sorted({arch for _, arch in names}),
            blinded=bool(any_blinded), first_rated_at=first_at, last_rated_at=last_at,
        )  # fmt: skip
        out.append(counts)
    return sorted(out, key=lambda s: (s.last_rated_at, s.name), reverse=True)


@dataclass(frozen=True)
class MachineVerdict:
    """A feature's latest automated explanation and its scores."""

    explanation: str
    llm: str
    """The explaining LLM (its backend name)."""
    scores: dict[str, float | None]
    """simulation, detection, fuzzing -> score; None where not computed or undefined."""


def machine_verdicts(session: Session, features: Iterable[tuple[str, int]]) -> dict[tuple[str, int], MachineVerdict]:
    """The latest explanation (with text) and its scores of each (SAE name, feature index) that has one."""
    wanted: dict[str, set[int]] = {}
    for sae, index in features:
        wanted.setdefault(sae, set()).add(index)
    ids = dict(session.execute(select(SAERow.name, SAERow.id).where(SAERow.name.in_(list(wanted)))).all())
    out: dict[tuple[str, int], MachineVerdict] = {}
    for sae, indices in wanted.items():
        if sae not in ids:
            continue
        for index, row in latest_explanations(session, sae_id=ids[sae], features=sorted(indices)).items():
            out[(sae, index)] = MachineVerdict(row.text or "", row.llm, scores_of(row))
    return out
