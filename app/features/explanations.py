"""Automated explanations as the feature pages and the feature API read them (tables `explanations` and
`explanation_scores`, written by app.interp).

This layer sits below app.interp (which indexes SAEs through app.features), so it reads the tables itself:
- `score_columns`: each explanation's scores as one row (explanation_id, simulation, detection, fuzzing);
- `latest_columns`: per feature of an SAE its latest explanation with text and that explanation's scores,
  the explanation column of the feature table (searchable, sortable);
- `feature_explanations`: one feature's explanations and its failed attempts for the dashboard and the API.

"Latest" is the highest id among an SAE's explanations with status ok and a text, whatever the LLM (a rerun
replaces its row, so the newest write has the highest id), as in app.interp.store.latest_explanations.
Stored values are read defensively: a non-finite score is null, id lists keep only integers.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session

from app.core.tables import SCORE_KINDS, Explanation, ExplanationScore
from app.features.schemas import ExplanationOut, FailedExplanationOut, ScoreDetailOut, ScoresOut


def clean_score(value: Any) -> float | None:
    """A stored score as served: a finite float, else None (a NaN stored on Postgres must not fail a reply)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def id_list(value: Any) -> list[int]:
    """A stored list of ids as served: its integer entries (anything else in the column is ignored)."""
    if not isinstance(value, list):
        return []
    return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]


_defined = func.nullif(ExplanationScore.score, math.nan)
"""A score with NaN as NULL: Postgres keeps a NaN and sorts it above every number (SQLite stores NULL)."""


def score_columns(sae_id: int) -> Any:
    """Scores per explanation of the SAE as a subquery: (explanation_id, simulation, detection, fuzzing), NULL
    where absent."""
    return (
        select(
            ExplanationScore.explanation_id.label("explanation_id"),
            *[func.max(case((ExplanationScore.kind == k, _defined))).label(k) for k in SCORE_KINDS],
        )
        .join(Explanation, Explanation.id == ExplanationScore.explanation_id)
        .where(Explanation.sae_id == sae_id)
        .group_by(ExplanationScore.explanation_id)
        .subquery("explanation_scores_by_kind")
    )


def latest_columns(sae_id: int) -> Any:
    """Per feature of the SAE its latest explanation as a subquery: (feature_index, explanation_id, text, llm,
    prompt_version, created_at, simulation, detection, fuzzing); features without one are absent."""
    latest = (
        select(func.max(Explanation.id))
        .where(Explanation.sae_id == sae_id, Explanation.status == "ok", Explanation.text.is_not(None))
        .group_by(Explanation.feature_index)
    )
    scores = score_columns(sae_id)
    return (
        select(
            Explanation.feature_index.label("feature_index"),
            Explanation.id.label("explanation_id"),
            Explanation.text.label("text"),
            Explanation.llm.label("llm"),
            Explanation.prompt_version.label("prompt_version"),
            Explanation.created_at.label("created_at"),
            *[scores.c[k] for k in SCORE_KINDS],
        )
        .outerjoin(scores, scores.c.explanation_id == Explanation.id)
        .where(Explanation.id.in_(latest))
        .subquery("latest_explanation")
    )


def scores_out(row: Any) -> ScoresOut:
    """ScoresOut from anything with simulation, detection and fuzzing attributes (a row of the subqueries)."""
    return ScoresOut(**{k: clean_score(getattr(row, k, None)) for k in SCORE_KINDS})


def has_explanations(session: Session, sae_id: int) -> bool:
    """Whether any feature of the SAE has an explanation (the feature table shows its columns then)."""
    query = exists().where(Explanation.sae_id == sae_id, Explanation.status == "ok", Explanation.text.is_not(None))
    return bool(session.scalar(select(query)))


def _scored(value: Any, key: str) -> list[int]:
    return id_list(value.get(key)) if isinstance(value, dict) else []


def explanation_out(row: Explanation) -> ExplanationOut:
    """An explanation row (status ok, with text) and its loaded scores as served."""
    scores = {s.kind: s for s in row.scores if s.kind in SCORE_KINDS}
    details = {
        kind: ScoreDetailOut(
            n=s.n or 0,
            failures=s.failures or 0,
            examples=_scored(s.scored, "examples"),
            contexts=_scored(s.scored, "contexts"),
            error=s.error,
        )
        for kind, s in scores.items()
    }
    return ExplanationOut(
        id=row.id, text=row.text or "", llm=row.llm, prompt_version=row.prompt_version, created_at=row.created_at,
        scores=ScoresOut(**{k: clean_score(s.score) for k, s in scores.items()}), score_details=details,
        shown=id_list(row.shown),
    )  # fmt: skip


def failed_out(row: Explanation) -> FailedExplanationOut:
    """A failed or errored attempt as served."""
    return FailedExplanationOut(
        id=row.id, llm=row.llm, prompt_version=row.prompt_version, status=row.status, error=row.error,
        raw=row.raw or "", created_at=row.created_at,
    )  # fmt: skip


def feature_explanations(
    session: Session, *, sae_id: int, feature_index: int
) -> tuple[list[ExplanationOut], list[FailedExplanationOut]]:
    """One feature's explanations (status ok, with text) and its attempts without one, each newest first."""
    rows = session.scalars(
        select(Explanation)
        .where(Explanation.sae_id == sae_id, Explanation.feature_index == feature_index)
        .order_by(Explanation.id.desc())
    ).all()
    explained = [explanation_out(r) for r in rows if r.status == "ok" and r.text is not None]
    failed = [failed_out(r) for r in rows if not (r.status == "ok" and r.text is not None)]
    return explained, failed
