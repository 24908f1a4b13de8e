"""Read queries of the SAE catalogue: summaries, details, the frequency histogram, the sweeps an SAE is in.

Every function takes a Session and returns API models; unknown names raise NotFound (-> 404).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.catalog.saes import NotFound, get_sae
from app.catalog.schemas import FrequencyHistogram, IndexInfo, SAEDetail, SAESummary
from app.core.tables import Feature, IndexRun, Rating, SAERow, Sweep, SweepPointRow

FREQ_EDGES = [x / 4 for x in range(-28, 1)]  # log10 frequency from 1e-7 to 1 in quarter decades


def _rated_features(session: Session, sae_id: int) -> int:
    return session.scalar(select(func.count(func.distinct(Rating.feature_index))).where(Rating.sae_id == sae_id)) or 0


def sae_summary(session: Session, sae: SAERow) -> SAESummary:
    return SAESummary(
        name=sae.name, model=sae.model.name if sae.model else None, layer=sae.layer, site=sae.site,
        architecture=sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae, indexed_tokens=sae.indexed_tokens,
        metrics=sae.metrics or {}, rated_features=_rated_features(session, sae.id),
    )  # fmt: skip


def list_saes(session: Session) -> list[SAESummary]:
    return [sae_summary(session, sae) for sae in session.scalars(select(SAERow).order_by(SAERow.name))]


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


def check_index(sae: SAERow, index: int) -> None:
    if not 0 <= index < sae.d_sae:
        raise NotFound(f"SAE {sae.name!r} has features 0 to {sae.d_sae - 1}; there is no feature {index}")


def sweeps_of(session: Session, sae_name: str) -> list[str]:
    """Names of the sweeps an SAE belongs to (the SAE page's "Compared in")."""
    query = (
        select(Sweep.name)
        .join(SweepPointRow, SweepPointRow.sweep_id == Sweep.id)
        .join(SAERow, SAERow.id == SweepPointRow.sae_id)
        .where(SAERow.name == sae_name)
        .order_by(Sweep.name)
    )
    return list(session.scalars(query).unique())
