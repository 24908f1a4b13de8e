"""What a feature dashboard shows (the feature page and the rating queue both show one).

`load_feature` gathers a feature's detail, the ids of the examples on screen and its latest
ratings into a `FeatureView`; `FeatureView.shown` is what a rating records of the screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.catalog.queries import check_index
from app.catalog.saes import get_sae
from app.catalog.vocab import vocab_for
from app.core.tables import Example, SAERow
from app.features.queries import feature_detail
from app.features.schemas import FeatureDetail
from app.ratings.queries import list_ratings
from app.ratings.schemas import RatingOut
from app.web.rendering import error_page
from app.web.tokens import SHORT_RADIUS

UI_VERSION = "pages-1"
"""Recorded with each rating: which version of the dashboard the rater saw."""


@dataclass(kw_only=True)
class FeatureView:
    """Everything a dashboard shows about one feature."""

    sae: SAERow
    detail: FeatureDetail
    top_ids: list[int]
    band_ids: list[int]
    ratings: list[RatingOut]

    @property
    def scale(self) -> float:
        return self.detail.max_activation if self.detail.max_activation > 0 else 1.0

    def shown(self, context: str, **extra: Any) -> dict[str, Any]:
        """What a rater sees of this feature, recorded with the rating."""
        return {"view": "feature", "top_example_ids": self.top_ids, "band_example_ids": self.band_ids,
                "examples": len(self.top_ids) + len(self.band_ids), "context": context,
                "context_radius": SHORT_RADIUS if context == "short" else None, "ui_version": UI_VERSION,
                **extra}  # fmt: skip


class NotIndexed(Exception):
    """The SAE has no index yet."""


def load_feature(request: Request, session: Session, name: str, index: int, *, with_ratings: bool) -> FeatureView:
    """The dashboard of feature `index` of SAE `name` (NotFound, NotIndexed); the latest 50 ratings if asked."""
    sae = get_sae(session, name)
    check_index(sae, index)
    if sae.index_run_id is None:
        raise NotIndexed(name)
    vocab = vocab_for(request.app.state.engine, sae.model) if sae.model is not None else ()
    detail = feature_detail(session, name, index, vocab)
    rows = session.execute(
        select(Example.id, Example.band)
        .where(Example.run_id == sae.index_run_id, Example.feature_index == index, Example.split == "shown")
        .order_by(Example.band, Example.rank)
    ).all()
    ratings = list_ratings(session, name, index)[-50:] if with_ratings else []
    return FeatureView(sae=sae, detail=detail, top_ids=[r.id for r in rows if r.band == -1],
                       band_ids=[r.id for r in rows if r.band >= 0], ratings=ratings)  # fmt: skip


def context_mode(request: Request) -> str:
    """The examples' context: 'short' (SHORT_RADIUS tokens either side of the max) or 'full' (?context=full)."""
    return "full" if request.query_params.get("context") == "full" else "short"


def not_indexed_page(request: Request, name: str) -> HTMLResponse:
    return error_page(
        request, 404, f"{name} is not indexed yet",
        "Its features have no statistics or examples yet. Index it first:", command=f"jumpscope index {name}",
        sae_name=name,
    )  # fmt: skip
