"""REST bodies of the SAE catalogue: summaries and details of registered SAEs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
