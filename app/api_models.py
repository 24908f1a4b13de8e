"""Request and response bodies of the REST API (pydantic): they make the OpenAPI document at /docs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schema import NOTE_MAX_CHARS

Label = Literal["yes", "maybe", "no"]
NO_NUL = r"^[^\x00]*$"
"""Postgres text cannot hold NUL characters: string fields refuse them (422, never a database error)."""
MAX_TEXTS = 16
MAX_TEXT_CHARS = 20_000


def _types(annotation: Any) -> set[Any]:
    """The plain types inside an annotation (int | None -> {int, NoneType}; list[int] -> {list, int})."""
    args = get_args(annotation)
    found = {get_origin(annotation) or annotation}
    for arg in args:
        found |= _types(arg)
    return found


class _Request(BaseModel):
    """A request body: unknown keys refused, and true/false never read as a number (pydantic's lax mode would)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                items = value if isinstance(value, list) else [value]
                numeric = _types(field.annotation) & {int, float}
                if numeric and any(isinstance(v, bool | str) for v in items):
                    raise ValueError(f"{name}: must be a number, not {json.dumps(value)[:40]}")
        return data


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["ok", "unavailable"]
    encoder: Literal["ok", "unavailable"]


class RatingSummary(BaseModel):
    yes: int = 0
    maybe: int = 0
    no: int = 0
    total: int = 0


class IndexInfo(BaseModel):
    tokens: int = Field(description="Non-special tokens streamed by the indexer.")
    dataset: str | None
    params: dict[str, Any] = Field(description="top_k, window, n_bands, band_size, n_bins, seed, context_size, ...")
    finished_at: datetime | None


class SAESummary(BaseModel):
    name: str
    model: str | None
    layer: int | None
    site: str | None
    architecture: str
    d_in: int
    d_sae: int
    indexed_tokens: int
    metrics: dict[str, Any] = Field(description="Eval metrics: l0, fvu, delta_lm_loss, dead/dense fractions, ...")
    rated_features: int = Field(description="Features with at least one rating.")


class FrequencyHistogram(BaseModel):
    edges: list[float] = Field(description="log10(frequency) bin edges.")
    counts: list[int]
    dead: int = Field(description="Features that never fired (not in the bins).")
    dense_1pct: int = Field(description="Features firing on more than 1% of tokens.")
    dense_10pct: int


class SAEDetail(SAESummary):
    dataset: str | None
    context_size: int | None
    normalization_scale: float
    tokens_trained: int
    prepend_bos: bool
    index: IndexInfo | None
    frequency_histogram: FrequencyHistogram | None


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


class RatingIn(_Request):
    model_config = ConfigDict(extra="forbid")

    rater: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=NO_NUL,
        description="Who rates (ignored when tokens are configured).",
    )
    label: Label
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
        self.shown = _without_nul(self.shown)
        if len(json.dumps(self.shown)) > 100_000:
            raise ValueError("'shown' is limited to 100,000 characters of JSON")
        return self


class RatingOut(BaseModel):
    id: int
    sae: str
    feature_index: int
    rater: str
    label: Label
    note: str
    study_id: str
    blinded: bool
    shown: dict[str, Any]
    presentation_order: int | None
    time_spent_ms: int | None
    created_at: datetime
    updated_at: datetime


class _EncodeOptions(_Request):
    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, description="Keep the k strongest features per token (at most d_sae).")
    features: list[int] | None = Field(
        None, min_length=1, max_length=256, description="Also return these features densely (indices < d_sae)."
    )
    include_bos: bool = True


class EncodeText(_EncodeOptions):
    """One text; the reply is one EncodeOut."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class EncodeTexts(_EncodeOptions):
    """Several texts; the reply holds one EncodeOut per text."""

    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        min_length=1, max_length=MAX_TEXTS
    )


EncodeIn = EncodeText | EncodeTexts


class FeatureActivation(BaseModel):
    index: int
    value: float


class DenseValues(BaseModel):
    index: int
    values: list[float]


class EncodeOut(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    activations: list[list[FeatureActivation]] = Field(description="Per token: active features, highest first.")
    features: list[DenseValues] | None = None


class EncodeBatchOut(BaseModel):
    results: list[EncodeOut]


class JobCreated(BaseModel):
    id: int
    status: str


class JobOut(BaseModel):
    id: int
    kind: str
    params: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    message: str
    metrics: list[dict[str, Any]]
    result: dict[str, Any]
    error: str | None
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


def _without_nul(value: Any) -> Any:
    """value with every NUL character (in keys and strings, at any depth) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _no_nul(value: Any, where: str) -> None:
    """Postgres text cannot hold NUL characters: refuse them up front (422, not a database error)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, where)


class TrainJobParams(_Request):
    """A training job: the same choices as `jumpscope train`, then registration (and optionally indexing)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$", description="Name to register the SAE under.")
    model: str = Field("gemma3-270m", min_length=1, max_length=500, pattern=NO_NUL)
    layer: int | None = Field(None, ge=0, le=1000)
    site: Literal["resid", "mlp", "attn"] = "resid"
    dataset: str | None = Field(None, min_length=1, max_length=1000, pattern=NO_NUL)
    activations: str | None = Field(
        None, min_length=1, max_length=1000, pattern=NO_NUL, description="Cached shards instead."
    )
    architecture: Literal["jumprelu", "relu", "topk", "gated"] = "jumprelu"
    width: int = Field(4096, ge=16, le=1 << 20)
    l0_coeff: float | None = Field(None, gt=0, le=100)
    l1_coeff: float | None = Field(None, gt=0, le=100)
    k: int = Field(32, ge=1, le=4096)
    tokens: int = Field(1_000_000, ge=4096, le=100_000_000_000)
    batch_size: int = Field(4096, ge=16, le=1 << 20)
    recipe: Literal["paper", "short"] = "short"
    context_size: int | None = Field(None, ge=8, le=8192)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    index_tokens: int = Field(0, ge=0, le=1_000_000_000, description="Index this many tokens afterwards (0 = no).")
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Steps between checkpoints.")

    @model_validator(mode="after")
    def _check(self) -> TrainJobParams:
        _no_nul(self.model_dump(), "params")
        return self


class IndexJobParams(_Request):
    """An indexing job: the same choices as `jumpscope index`."""

    model_config = ConfigDict(extra="forbid")

    sae: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    tokens: int = Field(1_000_000, ge=1, le=1_000_000_000)
    dataset: str | None = Field(None, min_length=1, max_length=1000, pattern=NO_NUL)
    top_k: int = Field(20, ge=1, le=1000)
    window: int = Field(64, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self) -> IndexJobParams:
        _no_nul(self.model_dump(), "params")
        return self


class TrainJobIn(_Request):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"]
    params: TrainJobParams


class IndexJobIn(_Request):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["index"]
    params: IndexJobParams


JobIn = Annotated[TrainJobIn | IndexJobIn, Field(discriminator="kind")]


class SweepPointOut(BaseModel):
    """One SAE of a sparsity sweep and its held-out metrics."""

    sae: str | None = Field(description="The registered SAE (None once it was deleted)")
    architecture: str
    knob: str = Field(description="lambda (jumprelu, relu, gated) or k (topk)")
    value: float
    l0: float | None = None
    fvu: float | None = None
    delta_lm_loss: float | None = None
    dead_fraction: float | None = None
    dense_fraction_1pct: float | None = None
    dense_fraction_10pct: float | None = None
    mse: float | None = None
    train_seconds: float = 0.0


class MatchedL0Out(BaseModel):
    """Another architecture's metric interpolated (linear in log L0) at a JumpReLU point's L0."""

    l0: float
    architecture: str
    reference: float = Field(description="JumpReLU's value at this L0")
    other: float
    difference: float = Field(description="other - reference: above 0 JumpReLU is better")
    ratio: float | None = Field(description="other / reference (None unless the reference is positive)")


class SweepSummary(BaseModel):
    name: str
    model: str | None
    layer: int | None
    site: str | None
    n_points: int
    architectures: list[str]
    budget: dict[str, float] = Field(description="Seconds per stage: harvest, train, eval, total")
    created_at: datetime


class SweepDetail(BaseModel):
    name: str
    model: str | None
    layer: int | None
    site: str | None
    config: dict[str, Any] = Field(description="trainer.sweep.SweepConfig: width, tokens, recipe, seed, grid")
    budget: dict[str, float]
    points: list[SweepPointOut]
    matched_l0: dict[str, list[MatchedL0Out]] = Field(description="By metric (fvu, delta_lm_loss)")
    created_at: datetime
    updated_at: datetime
