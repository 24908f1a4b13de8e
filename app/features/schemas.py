"""REST bodies of indexed features: lists, dashboards, examples, histograms, automated explanations."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.ratings.schemas import RatingSummary


class ScoresOut(BaseModel):
    """An explanation's scores on held-out examples; null where not computed or undefined."""

    simulation: float | None = Field(None, description="Pearson correlation of simulated and true activations.")
    detection: float | None = Field(None, description="Balanced accuracy, activating vs non-activating contexts.")
    fuzzing: float | None = Field(None, description="Balanced accuracy, true vs random markings of the tokens.")


class ScoreDetailOut(BaseModel):
    """What one score was computed on."""

    n: int = Field(description="Items scored: tokens (simulation) or contexts (detection, fuzzing).")
    failures: int = Field(description="LLM answers that could not be read (their items are not in n).")
    examples: list[int] = Field(description="Ids of the held-out examples scored.")
    contexts: list[int] = Field(description="Ids of the non-activating context windows scored.")
    error: str | None = Field(description="Why the score is missing, when the scorer itself failed.")


class ExplanationOut(BaseModel):
    """An LLM's explanation of a feature and its scores."""

    id: int
    text: str
    llm: str = Field(description="The explaining backend.")
    prompt_version: str
    created_at: datetime
    scores: ScoresOut
    score_details: dict[str, ScoreDetailOut] = Field(description="Per computed score, what it was computed on.")
    shown: list[int] = Field(description="Ids of the examples the LLM was shown to explain the feature.")


class FailedExplanationOut(BaseModel):
    """An explain attempt that gave no explanation: the LLM's answer was unreadable (failed) or never came (error)."""

    id: int
    llm: str
    prompt_version: str
    status: str = Field(description="failed or error.")
    error: str | None
    raw: str = Field(description="The LLM's answer as written (bounded).")
    created_at: datetime


class FeatureSummary(BaseModel):
    index: int
    frequency: float
    fire_count: int
    max_activation: float
    mean_activation: float
    top_text: str = Field(description="Text around the max token of the top examples.")
    ratings: RatingSummary
    explanation: str | None = Field(None, description="The feature's latest automated explanation, if any.")
    scores: ScoresOut | None = Field(None, description="The latest explanation's scores (null: no explanation).")


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
    explanations: list[ExplanationOut] = Field(
        default_factory=list, description="Automated explanations with their scores, newest first (any LLM)."
    )
    failed_explanations: list[FailedExplanationOut] = Field(
        default_factory=list,
        description="Explain attempts that gave no explanation (not in `explanations`), newest first.",
    )
