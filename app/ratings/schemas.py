"""REST bodies of ratings: what a rater sends, what is stored, per-feature counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth.names import NAME_MAX_CHARS, NAME_PATTERN, NAME_RULE, check_name
from app.core.schemas import NO_NUL, StrictBody, check_json, without_nul
from app.core.tables import NOTE_MAX_CHARS, RatingLabel


class RatingSummary(BaseModel):
    yes: int = 0
    maybe: int = 0
    no: int = 0
    total: int = 0


SHOWN_MAX_CHARS = 100_000
"""A rating's `shown` is at most this many characters of JSON."""


class RatingIn(StrictBody):
    model_config = ConfigDict(extra="forbid")

    rater: str | None = Field(
        None,
        description=f"Who rates (ignored when tokens are configured): {NAME_RULE}.",
        json_schema_extra={"minLength": 1, "maxLength": NAME_MAX_CHARS, "pattern": NAME_PATTERN},
    )
    label: RatingLabel
    note: str = Field("", max_length=NOTE_MAX_CHARS, pattern=NO_NUL)
    study_id: str = Field("", max_length=100, pattern=NO_NUL, description="'' outside a study.")
    blinded: bool = False
    shown: dict[str, Any] = Field(
        default_factory=dict,
        description="What the rater saw: a JSON object of at most 100,000 characters, nested at most 20 deep, "
        "finite numbers (NUL characters are stored as U+FFFD).",
    )
    presentation_order: int | None = Field(None, ge=0, le=10_000_000)
    time_spent_ms: int | None = Field(None, ge=0, le=86_400_000)

    @field_validator("rater", mode="before")
    @classmethod
    def _plain_rater(cls, value: Any) -> Any:
        return check_name(value) if isinstance(value, str) else value

    @field_validator("shown")
    @classmethod
    def _plain_shown(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json(value, max_chars=SHOWN_MAX_CHARS)
        return dict(without_nul(value))


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
