"""Reads of the text -> features page: the SAEs it may compare, and the indexed maxima of features.

Plain functions taking a Session; unknown names raise catalog's NotFound (-> 404).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.catalog.saes import get_sae
from app.core.tables import Feature, Model, SAERow


@dataclass(frozen=True)
class SAEInfo:
    """What the page needs of one SAE's row."""

    id: int
    name: str
    model: str | None
    layer: int | None
    site: str | None
    d_sae: int
    prepend_bos: bool
    index_run_id: int | None


def _info(row: SAERow) -> SAEInfo:
    return SAEInfo(id=row.id, name=row.name, model=row.model.name if row.model else None, layer=row.layer,
                   site=row.site, d_sae=row.d_sae, prepend_bos=row.prepend_bos,
                   index_run_id=row.index_run_id)  # fmt: skip


def sae_info(session: Session, name: str) -> SAEInfo:
    """One SAE by name (NotFound)."""
    return _info(get_sae(session, name))


def comparable(session: Session, sae: SAEInfo) -> list[SAEInfo]:
    """The other SAEs that can share a forward pass with `sae`: same model and BOS rule; by layer, site, name."""
    if sae.model is None:
        return []
    rows = session.scalars(
        select(SAERow)
        .join(Model, SAERow.model_id == Model.id)
        .where(Model.name == sae.model, SAERow.name != sae.name, SAERow.prepend_bos == sae.prepend_bos)
        .where(SAERow.layer.is_not(None), SAERow.site.is_not(None))
        .order_by(SAERow.layer, SAERow.site, SAERow.name)
    ).all()
    return [_info(row) for row in rows]


def indexed_maxima(session: Session, sae: SAEInfo, indices: Collection[int]) -> dict[int, float]:
    """Feature -> its max activation in the SAE's current index (nothing when it is not indexed)."""
    if sae.index_run_id is None or not indices:
        return {}
    rows = session.execute(
        select(Feature.index, Feature.max_activation).where(
            Feature.run_id == sae.index_run_id, Feature.index.in_(sorted(set(indices)))
        )
    ).all()
    return {int(index): float(value) for index, value in rows}
