"""A sparsity sweep: the paper's Fig. 2 comparison on activations anyone can run.

SAEs of several architectures, each at several sparsity levels, train on one activation cache
with one budget (tokens, batch, recipe, seed) and are evaluated on the same held-out tokens:
L0, FVU, dead and dense fractions, and delta LM loss on one shared set of predictions. Each
architecture has its own sparsity knob (its registry spec's `knob`): lambda of the L0 penalty
(JumpReLU), lambda of the decoder-norm weighted L1 penalty (ReLU, Gated), or k (TopK).

This module defines the grid and measures the SAEs; `app.sweeps.run` harvests the cache, trains
every point through the app's pipeline, stores and plots the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.evaluation.delta_lm import delta_lm_losses
from trainer.evaluation.metrics import evaluate
from trainer.formats.native import load_native
from trainer.saes import registry
from trainer.saes.config import SAEConfig
from trainer.training.config import Recipe, TrainConfig

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "jumprelu": (1.7e-5, 3.5e-5, 8e-5, 1.5e-4, 2.8e-4),
    "relu": (0.013, 0.03, 0.07, 0.15, 0.35),
    "topk": (10, 20, 40, 80, 160),
    "gated": (0.014, 0.035, 0.08, 0.18, 0.4),
}
"""Knob values per architecture for L0 of about 10 to 160 on Gemma 3 270M layer 9 (resid) with the
short recipe, placed by a log-log fit to the --quick run (at the same lambda the old recipe's L0
moved by under 20% from --quick to the defaults); JumpReLU's points sit inside TopK's range so
that each has a matched-L0 reading. Measured at the defaults: README, "Reproducing the paper's
Fig. 2" (at batch 1,024, since session 15, the JumpReLU points land at L0 10-138 and Gated's at
1-207)."""

QUICK_GRID: dict[str, tuple[float, ...]] = {
    "jumprelu": (2e-5, 6e-5, 1.5e-4, 4e-4),
    "relu": (0.002, 0.006, 0.02, 0.06),
    "topk": (12, 32, 64, 128),
    "gated": (0.002, 0.006, 0.02, 0.06),
}
"""`--quick`: the calibration run (README): four points per architecture; with the short recipe at
batch 512 the JumpReLU points land at L0 113 to 9 and TopK's at 12 to 128, ReLU's and Gated's reach
270-400 at their small lambdas (DEFAULT_GRID moves them into range)."""


@dataclass(frozen=True)
class SweepPoint:
    """One SAE of the sweep: an architecture at one value of its sparsity knob."""

    architecture: str
    value: float

    def __post_init__(self) -> None:
        if self.architecture not in registry.names():
            raise ValueError(f"architecture must be one of {', '.join(registry.names())}, got {self.architecture!r}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"{self.architecture}: the {self.knob} values must be positive, got {self.value}")
        if self.knob == "k" and self.value != int(self.value):
            raise ValueError(f"{self.architecture}: k must be a whole number, got {self.value}")

    @property
    def knob(self) -> str:
        """The sparsity knob this point sets: "lambda" or "k" (the architecture's registry spec)."""
        return registry.get(self.architecture).knob

    @property
    def slug(self) -> str:
        """A URL- and file-safe name: 'topk-k48', 'jumprelu-lambda0.0002'."""
        value = str(int(self.value)) if self.knob == "k" else f"{self.value:.6g}"
        return f"{self.architecture}-{self.knob}{value}"


SWEPT = {"d_in", "d_sae", "architecture", "k", "tokens", "batch_size", "recipe", "seed", "sparsity_coeff", "device"}
"""Fields the sweep itself sets per point; everything else may be overridden."""
OVERRIDABLE = ({f.name for f in fields(SAEConfig)} | {f.name for f in fields(TrainConfig)}) - SWEPT


@dataclass
class SweepConfig:
    """What every SAE of a sweep shares, and the grid of knob values."""

    width: int = 4096
    """d_sae of every SAE."""
    train_tokens: int = 1_500_000
    """Activations harvested once into the cache; each SAE trains on epochs x this many."""
    epochs: float = 1.0
    """Passes of each SAE over the cache (1 = every token seen once)."""
    batch_size: int = 1024
    """Tokens per optimiser step: 1,024 (1,464 steps for the default 1.5M tokens) since session 15, 4,096
    (366 steps) before. Short runs need the steps (README, "Steps at the defaults"): on the validation
    split, batch 1,024 took JumpReLU's FVU at L0 ~20 14% lower and TopK's 10%. At 1,024 on Gemma 3 the
    rare massive-norm tokens (about 1 in 3,000, 100x the typical squared norm) arrive one batch at a time
    and blew ReLU and JumpReLU runs up under plain Adam (README, "The CPU defaults at batch 1,024"); the
    short recipe's per-element bound on Adam's steps (update_clip) is what makes 1,024 safe."""
    recipe: Recipe = "short"
    """Training recipe for every architecture (jumprelu.md §3.3: `paper` learns nothing sparse in
    a CPU-sized budget)."""
    seed: int = 0
    """One seed for every SAE: the same initialisation stream and the same shuffled token order."""
    eval_tokens: int = 100_000
    """Held-out activations for L0, FVU, dead and dense fractions."""
    lm_tokens: int = 8_192
    """Held-out next-token predictions for delta LM loss (the same ones for every SAE)."""
    grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_GRID))
    """Knob values per architecture (see SweepPoint.knob); leave an architecture out to skip it."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Named deviations for every SAE: SAEConfig or TrainConfig fields (bandwidth, threshold_init,
    threshold_param, lr, sparsity_warmup_steps, ...), taking precedence over the recipe."""

    def __post_init__(self) -> None:
        if self.width <= 0 or self.batch_size <= 0:
            raise ValueError("width and batch_size must be positive")
        if self.train_tokens < self.batch_size:
            raise ValueError(f"train_tokens ({self.train_tokens}) must be at least batch_size ({self.batch_size})")
        if self.eval_tokens <= 0 or self.lm_tokens < 0:
            raise ValueError("eval_tokens must be positive and lm_tokens not negative")
        if not 0 < self.epochs <= 100:
            raise ValueError(f"epochs must be in (0, 100], got {self.epochs}")
        unknown = set(self.overrides) - OVERRIDABLE
        if unknown:
            raise ValueError(
                f"cannot override {', '.join(sorted(unknown))}: allowed are {', '.join(sorted(OVERRIDABLE))}"
            )
        self.grid = {arch: tuple(float(v) for v in values) for arch, values in self.grid.items()}
        self.points()  # validates every value

    def points(self) -> list[SweepPoint]:
        """Every SAE of the sweep, architecture by architecture in registration order."""
        unknown = set(self.grid) - set(registry.names())
        if unknown:
            raise ValueError(f"unknown architectures in the grid: {', '.join(sorted(unknown))}")
        points = [SweepPoint(arch, v) for arch in registry.names() for v in sorted(self.grid.get(arch, ()))]
        if not points:
            raise ValueError("the grid holds no points")
        return points

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "grid": {arch: list(values) for arch, values in self.grid.items()}}


def evaluate_points(
    sae_dirs: dict[str, Path],
    held_out: Sequence[Tensor],
    *,
    model: nn.Module | None = None,
    layer: int | None = None,
    site: str = "resid",
    lm_batches: Iterable[tuple[Tensor, Tensor, Tensor]] = (),
    lm_tokens: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Metrics of every SAE (by name) on the same held-out activations and, with a model, the
    same held-out predictions (one clean pass shared by all: paired deltas)."""
    saes = {name: load_native(path).sae.to(device).eval() for name, path in sae_dirs.items()}
    n_tokens = sum(chunk.shape[0] for chunk in held_out)
    results: dict[str, dict[str, Any]] = {
        name: asdict(evaluate(sae, held_out, n_tokens, device=device)) for name, sae in saes.items()
    }
    if model is not None and lm_tokens > 0:
        if layer is None:
            raise ValueError("delta LM loss needs the layer the SAEs read")
        reconstructs: dict[str, Callable[[Tensor], Tensor]] = {name: sae.forward for name, sae in saes.items()}
        losses = delta_lm_losses(
            model, reconstructs, layer=layer, site=site, batches=lm_batches, max_tokens=lm_tokens, progress=progress
        )
        for name, loss in losses.items():
            results[name] |= {"delta_lm_loss": loss.delta_lm_loss, "clean_lm_loss": loss.clean_loss,
                              "spliced_lm_loss": loss.spliced_loss, "lm_tokens": loss.tokens}  # fmt: skip
    return results


__all__ = [
    "DEFAULT_GRID",
    "QUICK_GRID",
    "SweepConfig",
    "SweepPoint",
    "evaluate_points",
]
