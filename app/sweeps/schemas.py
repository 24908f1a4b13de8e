"""REST bodies of sparsity sweeps (the paper's Fig. 2) and their matched-L0 readings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SweepPointOut(BaseModel):
    """One SAE of a sparsity sweep and its held-out metrics."""

    sae: str | None = Field(description="The registered SAE (None once it was deleted)")
    architecture: str
    knob: str = Field(description="lambda (jumprelu, relu, gated) or k (topk)")
    value: float
    l0: float | None = None
    fvu: float | None = None
    fvu_typical: float | None = Field(
        default=None, description="FVU without the massive-activation tokens (trainer.evaluation.metrics)"
    )
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
    config: dict[str, Any] = Field(description="trainer.sweep.grid.SweepConfig: width, tokens, recipe, seed, grid")
    budget: dict[str, float]
    points: list[SweepPointOut]
    matched_l0: dict[str, list[MatchedL0Out]] = Field(description="By metric (fvu, delta_lm_loss, fvu_typical)")
    created_at: datetime
    updated_at: datetime
