"""Read queries of indexed features: filtered, sorted pages of features and one feature's dashboard.

Nothing is computed from activations here: the indexer stored it. Unknown names and indices raise NotFound.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from app.catalog.queries import check_index
from app.catalog.saes import NotFound, get_sae
from app.catalog.vocab import decode
from app.core.tables import SCORE_KINDS, SNIPPET_SEPARATOR, Example, Feature, IndexRun, Rating, RatingLabel, ScoreKind
from app.features.explanations import feature_explanations, latest_columns, scores_out
from app.features.schemas import (
    BandOut,
    ExampleOut,
    FeatureDetail,
    FeatureList,
    FeatureSummary,
    Histogram,
    OutputToken,
    SimilarFeature,
)
from app.ratings.queries import rating_columns, rating_summary
from app.ratings.schemas import RatingSummary

SortKey = Literal["index", "frequency", "max_activation", "rating", ScoreKind]
"""What the feature list sorts by (rating: the mean label, yes 2, maybe 1, no 0; simulation, detection,
fuzzing: that score of the latest explanation, features without one last)."""
SortOrder = Literal["asc", "desc"]
LabelFilter = Literal[RatingLabel, "unrated"]
"""Features with at least one rating of this label, or with none."""


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_features(
    session: Session,
    name: str,
    *,
    sort: SortKey = "index",
    order: SortOrder = "asc",
    min_frequency: float | None = None,
    max_frequency: float | None = None,
    q: str | None = None,
    label: LabelFilter | None = None,
    limit: int = 50,
    offset: int = 0,
) -> FeatureList:
    """One page of an SAE's features, filtered and sorted (an unindexed SAE has none)."""
    sae = get_sae(session, name)
    if sae.index_run_id is None:
        return FeatureList(total=0, items=[])
    ratings = rating_columns(sae.id)
    explained = latest_columns(sae.id)
    conditions = [Feature.run_id == sae.index_run_id]
    if min_frequency is not None:
        conditions.append(Feature.frequency >= min_frequency)
    if max_frequency is not None:
        conditions.append(Feature.frequency <= max_frequency)
    if q:
        pattern = _like(q)
        in_notes = exists().where(
            Rating.sae_id == sae.id, Rating.feature_index == Feature.index, Rating.note.ilike(pattern, escape="\\")
        )
        conditions.append(
            or_(Feature.search_text.ilike(pattern, escape="\\"), in_notes, explained.c.text.ilike(pattern, escape="\\"))
        )
    if label == "unrated":
        conditions.append(ratings.c.total.is_(None))
    elif label is not None:
        conditions.append(ratings.c[label] > 0)
    base = (
        select(Feature, ratings, explained.c.text.label("explanation"), *[explained.c[k] for k in SCORE_KINDS])
        .outerjoin(ratings, ratings.c.feature_index == Feature.index)
        .outerjoin(explained, explained.c.feature_index == Feature.index)
        .where(and_(*conditions))
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    column = {"index": Feature.index, "frequency": Feature.frequency, "max_activation": Feature.max_activation,
              "rating": ratings.c.score, **{k: explained.c[k] for k in SCORE_KINDS}}[sort]  # fmt: skip
    ordered = column.asc() if order == "asc" else column.desc()
    if sort == "rating" or sort in SCORE_KINDS:
        ordered = ordered.nulls_last()
    rows = session.execute(base.order_by(ordered, Feature.index).limit(limit).offset(offset)).all()
    return FeatureList(total=total, items=[_summary(row) for row in rows])


def _summary(row: Any) -> FeatureSummary:
    f: Feature = row[0]
    return FeatureSummary(
        index=f.index, frequency=f.frequency, fire_count=f.fire_count, max_activation=f.max_activation,
        mean_activation=f.mean_activation, top_text=f.search_text.split(SNIPPET_SEPARATOR)[0] if f.search_text else "",
        ratings=RatingSummary(yes=row.yes or 0, maybe=row.maybe or 0, no=row.no or 0, total=row.total or 0),
        explanation=row.explanation, scores=scores_out(row) if row.explanation is not None else None,
    )  # fmt: skip


def _example(e: Example, vocab: tuple[str, ...]) -> ExampleOut:
    ids = np.frombuffer(e.token_ids, dtype="<i4").tolist()
    values = np.frombuffer(e.values, dtype="<f4")
    return ExampleOut(
        tokens=[decode(vocab, t) for t in ids], token_ids=ids,
        values=[round(float(v), 4) if math.isfinite(v) else 0.0 for v in values],
        max_value=e.max_value, max_position=e.max_position, document=e.document,
    )  # fmt: skip


def _tokens(pairs: list[Any], vocab: tuple[str, ...]) -> list[OutputToken]:
    return [OutputToken(token_id=t, token=decode(vocab, t), value=v) for t, v in pairs]


def feature_detail(session: Session, name: str, index: int, vocab: tuple[str, ...]) -> FeatureDetail:
    sae = get_sae(session, name)
    check_index(sae, index)
    for _attempt in range(3):  # a re-index may swap the run between our reads: read the new one
        if sae.index_run_id is None:
            raise NotFound(f"SAE {name!r} is not indexed yet: run `jumpscope index {name}`")
        run_id = sae.index_run_id
        feature = session.get(Feature, (run_id, index), populate_existing=True)
        examples = session.scalars(
            select(Example)
            .where(Example.run_id == run_id, Example.feature_index == index, Example.split == "shown")
            .order_by(Example.band, Example.rank)
        ).all()
        if feature is not None and session.get(IndexRun, run_id, populate_existing=True) is not None:
            break
        session.refresh(sae)
    else:
        raise NotFound(f"feature {index} of {name!r} is missing from its index")
    assert feature is not None
    bands: dict[int, BandOut] = {}
    for e in examples:
        if e.band >= 0 and e.band not in bands:
            bands[e.band] = BandOut(band=e.band, min=e.band_min or 0.0, max=e.band_max or 0.0, examples=[])
        if e.band >= 0:
            bands[e.band].examples.append(_example(e, vocab))
    explanations, failed = feature_explanations(session, sae_id=sae.id, feature_index=index)
    hist = feature.histogram or {}
    return FeatureDetail(
        sae=name, index=index, dead=feature.fire_count == 0, frequency=feature.frequency,
        fire_count=feature.fire_count, max_activation=feature.max_activation,
        mean_activation=feature.mean_activation,
        histogram=Histogram(max=hist.get("max", 0.0), bins=hist.get("bins", 0), counts=hist.get("counts", [])),
        top_positive_tokens=_tokens(feature.top_logits, vocab),
        top_negative_tokens=_tokens(feature.bottom_logits, vocab),
        similar=[SimilarFeature(index=i, cosine=c) for i, c in feature.similar],
        top_examples=[_example(e, vocab) for e in examples if e.band == -1],
        bands=sorted(bands.values(), key=lambda b: b.band, reverse=True),
        ratings=rating_summary(session, sae.id, index), explanations=explanations, failed_explanations=failed,
    )  # fmt: skip
