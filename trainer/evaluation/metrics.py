"""SAE evaluation on held-out activations: L0, FVU, MSE, dead and dense latents.

Definitions as Gemma Scope §3.3.2 (jumprelu.md §5): L0 = mean count of f_i > 0 per token;
FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (scale-free); a latent is dead when it
never fires over the eval tokens, dense when it fires on more than 1% / 10% of them.
Special tokens are already absent from activation sources.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from trainer.data.activations import ActivationError, batches
from trainer.saes.base import SAE


@dataclass
class EvalResult:
    """Metrics of one SAE on one set of tokens (raw activation units)."""

    l0: float
    """Mean number of active latents per token."""
    fvu: float
    """Fraction of variance unexplained."""
    mse: float
    """Squared error summed over d_in, averaged over tokens (raw units)."""
    dead_fraction: float
    """Share of latents that never fired."""
    dense_fraction_1pct: float
    """Share of latents firing on more than 1% of tokens."""
    dense_fraction_10pct: float
    """Share of latents firing on more than 10% of tokens."""
    tokens: int
    """Tokens evaluated."""


@torch.no_grad()
def evaluate(
    sae: SAE,
    chunks: Iterable[Tensor],
    n_tokens: int,
    *,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Evaluate an inference-form SAE on up to n_tokens raw activations."""
    sae = sae.to(device).eval()
    d_sae = sae.cfg.d_sae
    fires = torch.zeros(d_sae, dtype=torch.float64, device=device)
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)
    sum_sq = err = l0 = 0.0
    seen = 0
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, disable=not progress, desc="eval")
    for batch in batches(chunks, min(batch_size, n_tokens), keep_tail=True):
        x = batch[: n_tokens - seen].to(device).float()  # (B, d_in)
        f = sae.encode(x)  # (B, d_sae)
        x_hat = sae.decode(f)  # (B, d_in)
        active = f > 0
        fires += active.sum(0, dtype=torch.float64)
        l0 += float(active.sum())
        err += float((x_hat - x).double().pow(2).sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        seen += x.shape[0]
        bar.update(x.shape[0])
        if seen >= n_tokens:
            break
    bar.close()
    if seen == 0:
        raise ActivationError("no tokens to evaluate on")
    total_var = sum_sq - float(sum_x.pow(2).sum()) / seen  # sum ||x - mean||^2
    freq = fires / seen
    return EvalResult(
        l0=l0 / seen,
        fvu=err / total_var if total_var > 0 else float("nan"),
        mse=err / seen,
        dead_fraction=float((fires == 0).double().mean()),
        dense_fraction_1pct=float((freq > 0.01).double().mean()),
        dense_fraction_10pct=float((freq > 0.10).double().mean()),
        tokens=seen,
    )
