"""REST bodies of indexed features: lists, dashboards, examples, histograms."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.ratings.schemas import RatingSummary


class FeatureSummary(BaseModel):
    index: int
    frequency: float
    fire_count: int
    max_activation: float
    mean_activation: float
    top_text: str = Field(description="Text around the max token of the top examples.")
    ratings: RatingSummary


class FeatureList(BaseModel):
    total: int
    items: list[FeatureSummary]


class ExampleOut(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    values: list[float] = Field(description="The feature's activation at each token.")
    max_value: float
    max_position: int = Field(description="Index of the max token in tokens.")
    document: str | None


class BandOut(BaseModel):
    band: int = Field(description="0 is the lowest band.")
    min: float
    max: float
    examples: list[ExampleOut]


class Histogram(BaseModel):
    max: float = Field(description="Bins are equal-width over [0, max].")
    bins: int
    counts: list[int] = Field(description="Counts of non-zero activations per bin (trailing empty bins dropped).")


class OutputToken(BaseModel):
    token_id: int
    token: str
    value: float


class SimilarFeature(BaseModel):
    index: int
    cosine: float


class FeatureDetail(BaseModel):
    sae: str
    index: int
    dead: bool
    frequency: float
    fire_count: int
    max_activation: float
    mean_activation: float
    histogram: Histogram
    top_positive_tokens: list[OutputToken]
    top_negative_tokens: list[OutputToken]
    similar: list[SimilarFeature]
    top_examples: list[ExampleOut]
    bands: list[BandOut]
    ratings: RatingSummary
