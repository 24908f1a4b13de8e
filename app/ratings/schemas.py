"""REST bodies of ratings: what a rater sends, what is stored, per-feature counts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.schemas import NO_NUL, StrictBody, without_nul
from app.core.tables import NOTE_MAX_CHARS, RatingLabel


class RatingSummary(BaseModel):
    yes: int = 0
    maybe: int = 0
    no: int = 0
    total: int = 0


class RatingIn(StrictBody):
    model_config = ConfigDict(extra="forbid")

    rater: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=NO_NUL,
        description="Who rates (ignored when tokens are configured).",
    )
    label: RatingLabel
    note: str = Field("", max_length=NOTE_MAX_CHARS, pattern=NO_NUL)
    study_id: str = Field("", max_length=100, pattern=NO_NUL, description="'' outside a study.")
    blinded: bool = False
    shown: dict[str, Any] = Field(
        default_factory=dict, description="What the rater saw (any JSON; NUL characters are stored as U+FFFD)."
    )
    presentation_order: int | None = Field(None, ge=0, le=10_000_000)
    time_spent_ms: int | None = Field(None, ge=0, le=86_400_000)

    @model_validator(mode="after")
    def _check(self) -> RatingIn:
        self.shown = without_nul(self.shown)
        if len(json.dumps(self.shown)) > 100_000:
            raise ValueError("'shown' is limited to 100,000 characters of JSON")
        return self


class RatingOut(BaseModel):
    id: int
    sae: str
    feature_index: int
    rater: str
    label: RatingLabel
    note: str
    study_id: str
    blinded: bool
    shown: dict[str, Any]
    presentation_order: int | None
    time_spent_ms: int | None
    created_at: datetime
    updated_at: datetime
