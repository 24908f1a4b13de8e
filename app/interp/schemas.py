"""REST bodies of automated explanations: the paged list of an SAE's explanations, the per-SAE score
distributions (with the random-init baseline's), and the per-architecture scores of a sweep."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.features.schemas import ScoresOut


class ExplanationItem(BaseModel):
    """One stored explain attempt of a feature: an explanation with its scores, or an attempt without one."""

    id: int
    feature: int = Field(description="The feature's index.")
    status: str = Field(description="ok (explained), failed (the answer was unreadable) or error (no answer).")
    text: str | None = Field(description="The explanation; null for an attempt without one.")
    llm: str = Field(description="The explaining backend.")
    prompt_version: str
    scores: ScoresOut
    created_at: datetime
    error: str | None = Field(description="Why there is no explanation, for an attempt without one.")
    raw: str | None = Field(description="The LLM's answer as written, for an attempt without an explanation.")


class ExplanationList(BaseModel):
    total: int = Field(description="Attempts matching the filters, over all pages.")
    items: list[ExplanationItem]


class ScoreHistogram(BaseModel):
    """Counts of scores in `bins` equal-width bins over [min, max] (the last bin includes max)."""

    min: float
    max: float
    bins: int
    counts: list[int]


class ScoreStats(BaseModel):
    """One score kind over a set of features: each feature's latest explanation counts once."""

    n: int = Field(description="Features with this score defined.")
    mean: float | None
    median: float | None
    std: float | None = Field(description="Sample standard deviation (null below 2 scores).")
    low: float | None = Field(description="95% interval of the mean, normal approximation (null below 2 scores).")
    high: float | None
    histogram: ScoreHistogram


class SaeScores(BaseModel):
    """An SAE's explanations at a glance and its score distributions."""

    sae: str
    architecture: str
    features: int = Field(description="Features with an explanation (their latest one counts).")
    attempts: dict[str, int] = Field(description="Stored attempts by status: ok, failed, error.")
    scores: dict[str, ScoreStats] = Field(description="simulation, detection and fuzzing.")


class ExplanationSummary(SaeScores):
    """Score distributions of an SAE and, where one is registered, of its random-init baseline (Fig. 7)."""

    llm: str | None = Field(description="Only explanations by this LLM count (null: any LLM).")
    baseline: SaeScores | None = Field(description="The random-init baseline SAE (NAME-random), if registered.")


class GroupScores(BaseModel):
    """Scores pooled over a group of a sweep's SAEs: an architecture, or the random baselines."""

    name: str = Field(description="The architecture, or 'random baseline'.")
    kind: str = Field(description="architecture or baseline.")
    saes: list[str] = Field(description="The group's SAEs that have explanations.")
    features: int
    scores: dict[str, ScoreStats]


class SweepScores(BaseModel):
    """Automated interpretability per architecture of a sweep, over its SAEs that have explanations."""

    sweep: str
    llm: str | None
    groups: list[GroupScores] = Field(description="Architectures in the sweep's order, then the random baselines.")
    saes: list[SaeScores] = Field(description="Each explained SAE of the sweep (and baseline) on its own.")
