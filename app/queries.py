"""Read queries shared by the REST API and the HTML pages.

Every function takes a Session and returns plain API models; unknown names and indices
raise NotFound (-> 404). Nothing is computed from activations here: the indexer stored it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from sqlalchemy import Float, and_, case, cast, exists, func, or_, select
from sqlalchemy.orm import Session

from app.api_models import (
    BandOut,
    ExampleOut,
    FeatureDetail,
    FeatureList,
    FeatureSummary,
    FrequencyHistogram,
    Histogram,
    IndexInfo,
    OutputToken,
    RatingOut,
    RatingSummary,
    SAEDetail,
    SAESummary,
    SimilarFeature,
)
from app.registry import NotFound, get_sae
from app.schema import SAE, SNIPPET_SEPARATOR, Example, Feature, IndexRun, Rating
from app.vocab import decode

SortKey = Literal["index", "frequency", "max_activation", "rating"]
LabelFilter = Literal["yes", "maybe", "no", "unrated"]
FREQ_EDGES = [x / 4 for x in range(-28, 1)]  # log10 frequency from 1e-7 to 1 in quarter decades


def _rated_features(session: Session, sae_id: int) -> int:
    return session.scalar(select(func.count(func.distinct(Rating.feature_index))).where(Rating.sae_id == sae_id)) or 0


def sae_summary(session: Session, sae: SAE) -> SAESummary:
    return SAESummary(
        name=sae.name, model=sae.model.name if sae.model else None, layer=sae.layer, site=sae.site,
        architecture=sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae, indexed_tokens=sae.indexed_tokens,
        metrics=sae.metrics or {}, rated_features=_rated_features(session, sae.id),
    )  # fmt: skip


def list_saes(session: Session) -> list[SAESummary]:
    return [sae_summary(session, sae) for sae in session.scalars(select(SAE).order_by(SAE.name))]


def frequency_histogram(session: Session, run_id: int) -> FrequencyHistogram:
    freqs = np.array(session.scalars(select(Feature.frequency).where(Feature.run_id == run_id)).all(), dtype=float)
    live = freqs[freqs > 0]
    counts, _ = np.histogram(np.clip(np.log10(live), FREQ_EDGES[0], FREQ_EDGES[-1]), bins=FREQ_EDGES)
    return FrequencyHistogram(
        edges=FREQ_EDGES, counts=counts.tolist(), dead=int((freqs == 0).sum()),
        dense_1pct=int((freqs > 0.01).sum()), dense_10pct=int((freqs > 0.1).sum()),
    )  # fmt: skip


def sae_detail(session: Session, name: str) -> SAEDetail:
    sae = get_sae(session, name)
    run = session.get(IndexRun, sae.index_run_id) if sae.index_run_id is not None else None
    summary = sae_summary(session, sae)
    return SAEDetail(
        **summary.model_dump(), dataset=sae.dataset, context_size=sae.context_size,
        normalization_scale=sae.normalization_scale, tokens_trained=sae.tokens_trained, prepend_bos=sae.prepend_bos,
        index=IndexInfo(tokens=run.tokens, dataset=run.dataset, params=run.params, finished_at=run.finished_at)
        if run else None,
        frequency_histogram=frequency_histogram(session, run.id) if run else None,
    )  # fmt: skip


def _rating_columns(sae_id: int) -> Any:
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


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_features(
    session: Session,
    name: str,
    *,
    sort: SortKey = "index",
    order: Literal["asc", "desc"] = "asc",
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
    ratings = _rating_columns(sae.id)
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
        conditions.append(or_(Feature.search_text.ilike(pattern, escape="\\"), in_notes))
    if label == "unrated":
        conditions.append(ratings.c.total.is_(None))
    elif label is not None:
        conditions.append(ratings.c[label] > 0)
    base = (
        select(Feature, ratings).outerjoin(ratings, ratings.c.feature_index == Feature.index).where(and_(*conditions))
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    column = {"index": Feature.index, "frequency": Feature.frequency, "max_activation": Feature.max_activation,
              "rating": ratings.c.score}[sort]  # fmt: skip
    ordered = column.asc() if order == "asc" else column.desc()
    if sort == "rating":
        ordered = ordered.nulls_last()
    rows = session.execute(base.order_by(ordered, Feature.index).limit(limit).offset(offset)).all()
    return FeatureList(total=total, items=[_summary(row) for row in rows])


def _summary(row: Any) -> FeatureSummary:
    f: Feature = row[0]
    return FeatureSummary(
        index=f.index, frequency=f.frequency, fire_count=f.fire_count, max_activation=f.max_activation,
        mean_activation=f.mean_activation, top_text=f.search_text.split(SNIPPET_SEPARATOR)[0] if f.search_text else "",
        ratings=RatingSummary(yes=row.yes or 0, maybe=row.maybe or 0, no=row.no or 0, total=row.total or 0),
    )  # fmt: skip


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


def check_index(sae: SAE, index: int) -> None:
    if not 0 <= index < sae.d_sae:
        raise NotFound(f"SAE {sae.name!r} has features 0 to {sae.d_sae - 1}; there is no feature {index}")


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
            .where(Example.run_id == run_id, Example.feature_index == index)
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
        ratings=rating_summary(session, sae.id, index),
    )  # fmt: skip


def rating_out(rating: Rating, sae_name: str) -> RatingOut:
    return RatingOut(
        id=rating.id, sae=sae_name, feature_index=rating.feature_index, rater=rating.rater,
        label=rating.label,  # type: ignore[arg-type]
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
