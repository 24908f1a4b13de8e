"""The auxiliary loss on dead latents (AuxK, Gao et al. 2024): TopK's, and JumpReLU's `dead_aux`.

The dead latents' reconstruction of the residual x - x_hat, as a squared error over the residual's
variance. Under torchrun the variance is the whole (global) batch's, so that every rank divides by the
same number and the averaged gradient equals one process's on the whole batch (each rank's squared
error is a mean over its own equal share of tokens, which DDP's gradient average makes global).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def residual_variance(residual: Tensor) -> Tensor:
    """E||r - E[r]||^2 over the batch (every rank's tokens under torchrun); residual (B, d_in), detached."""
    r = residual.detach().double()  # (B, d_in): float64 so that E||r||^2 - ||E r||^2 cancels safely
    packed = torch.cat([r.sum(0), r.pow(2).sum().reshape(1), r.new_full((1,), float(r.shape[0]))])  # (d_in + 2,)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(packed)
    total, squares, n = packed[:-2], packed[-2], packed[-1]
    mean = total / n  # (d_in,)
    return (squares / n - mean.pow(2).sum()).clamp_min(1e-12).to(residual.dtype)


def aux_loss(residual_hat: Tensor, residual: Tensor) -> Tensor:
    """The residual's squared error over its variance (nan_to_num, as OpenAI's code); both (B, d_in)."""
    err = (residual_hat - residual).pow(2).sum(-1).mean()
    return torch.nan_to_num(err / residual_variance(residual))
