"""Massive activations: clip the norm of rare outlier tokens during training (a named deviation).

Residual streams carry rare tokens with a norm many times the typical one (Sun et al. 2024, "Massive
activations in large language models"). In Gemma 3 270M at layer 9 about 1 token in 3,000 (almost
all of them "'") has ~10x the median norm, ~85x its squared norm, 3% of all the squared norm of the
sweep's cache. At batch 4,096 every batch holds one or two; at 1,024 and below most batches hold
none and the next one that does carries a gradient its parameters' Adam second moments have not
seen, which under the paper's beta1 = 0 moves them by up to ~30x the learning rate (README, "The
CPU defaults at batch 1,024"). `TrainConfig.max_norm_ratio` scales such tokens down to a multiple
of the median norm for the optimiser, keeping their direction; evaluation sees them as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor


def norm_limit(sample: Tensor, ratio: float) -> float:
    """ratio x the median token norm of sample (N, d_in), in sample's units."""
    if ratio <= 0:
        raise ValueError(f"max_norm_ratio must be positive, got {ratio}")
    norms = torch.cat([part.float().norm(dim=1) for part in sample.split(65_536)])  # (N,)
    return ratio * float(norms.median())


def clip_token_norms(x: Tensor, limit: float) -> Tensor:
    """x (B, d_in) with every row whose norm exceeds limit scaled down to norm limit (direction kept);
    the other rows unchanged."""
    norms = x.norm(dim=1, keepdim=True)  # (B, 1)
    return x * (limit / norms).clamp(max=1.0)


__all__ = ["clip_token_norms", "norm_limit"]
