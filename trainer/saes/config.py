"""SAEConfig: the shape and architecture of one sparse autoencoder (torch-free).

Defaults are the JumpReLU paper's / Gemma Scope's (../shared/docs/jumprelu.md §3); the
architecture is any name in `trainer.saes.registry`. Sizes are whole numbers up to `MAX_D_IN` and
`MAX_D_SAE`, checked before anything is allocated (a config file cannot ask for terabytes).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from trainer.saes import registry

MAX_D_IN = 1 << 16
"""Widest activations an SAE may read (65,536): above any language model's residual stream or attention
output (Llama 3 405B: 16,384), so that a config file cannot ask for an absurd allocation."""
MAX_D_SAE = 1 << 26
"""Most latents an SAE may have (67,108,864): above the largest published dictionaries (34M latents)."""

ThresholdParam = Literal["log", "raw"]
BDecInit = Literal["zeros", "mean"]
"""Where b_dec starts: zeros (the paper) or the data mean."""


@dataclass
class SAEConfig:
    """Shape and architecture of one sparse autoencoder."""

    d_in: int
    """Width of the activations the SAE reads (d_model for resid/mlp, heads*head_dim for attn)."""
    d_sae: int
    """Number of latents (the dictionary width)."""
    architecture: str = "jumprelu"
    """A registered architecture (trainer.saes.registry): jumprelu (the paper), relu (ReLU +
    decoder-norm-weighted L1), topk (TopK + AuxK), gated, and any registered later."""
    use_pre_enc_bias: bool = True
    """Subtract b_dec from the input before encoding during training (Gemma Scope trains with it)."""
    bandwidth: float = 0.001
    """JumpReLU STE kernel width epsilon, in units where E||x||^2 = 1 (GS fn 5)."""
    threshold_init: float = 0.001
    """Initial JumpReLU threshold theta_0 (GS §3.2)."""
    threshold_param: ThresholdParam = "log"
    """Train log(theta) (the paper) or raw theta clamped above zero (converges in short runs)."""
    k: int = 32
    """TopK (architectures whose knob is k): active latents per token."""
    k_aux: int | None = None
    """TopK: latents used by the AuxK loss; None means d_in // 2 (Gao et al. 2024). JumpReLU's dead_aux uses it too."""
    dead_aux: float = 0.0
    """Deviation (JumpReLU): weight alpha of an AuxK loss on dead latents (Gao et al. 2024): the k_aux largest
    ReLU'd pre-activations among latents that have not fired for dead_tokens reconstruct the residual x - x_hat,
    so dead latents get a gradient towards what the live ones miss. Use it with TrainConfig.seed_dead_moments
    (the short recipe's default): without it the first auxiliary gradients after a latent's silence move it
    10-30x the learning rate. 0 = none, as the paper."""

    def __post_init__(self) -> None:
        if self.architecture not in registry.names():
            raise ValueError(f"architecture must be one of {', '.join(registry.names())}, got {self.architecture!r}")
        for name in ("d_in", "d_sae", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            setattr(self, name, int(value))
        if self.k_aux is not None and (isinstance(self.k_aux, bool) or not isinstance(self.k_aux, numbers.Integral)):
            raise ValueError(f"k_aux must be a whole number or None, got {self.k_aux!r}")
        for name, limit in (("d_in", MAX_D_IN), ("d_sae", MAX_D_SAE)):
            if not 0 < getattr(self, name) <= limit:
                raise ValueError(f"{name} must be in 1..{limit:,}, got {getattr(self, name):,}")
        if self.threshold_param not in get_args(ThresholdParam):
            raise ValueError(f"threshold_param must be log or raw, got {self.threshold_param!r}")
        if not 0 <= self.dead_aux <= 100:
            raise ValueError(f"dead_aux must be in [0, 100], got {self.dead_aux}")
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ValueError("bandwidth and threshold_init must be positive")
        if self.spec.knob == "k" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")

    @property
    def spec(self) -> registry.ArchitectureSpec:
        """The registry's facts about this config's architecture."""
        return registry.get(self.architecture)

    @property
    def resolved_k_aux(self) -> int:
        return min(self.k_aux or max(1, self.d_in // 2), self.d_sae)


__all__ = ["MAX_D_IN", "MAX_D_SAE", "SAEConfig", "ThresholdParam"]
