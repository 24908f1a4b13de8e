"""SAE evaluation on held-out activations: L0, FVU, MSE, dead and dense latents.

Definitions as Gemma Scope §3.3.2 (jumprelu.md §5): L0 = mean count of f_i > 0 per token;
FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (scale-free); a latent is dead when it
never fires over the eval tokens, dense when it fires on more than 1% / 10% of them.
Special tokens are already absent from activation sources.

FVU's denominator belongs largely to a few tokens where the residual stream carries massive
activations (Sun et al. 2024): on Gemma 3 270M layer 9, 22 of 30,000 tokens (a "'" most of them,
~10x the median norm) hold 45% of the centred variance, because the typical token sits close to the
large mean vector. So FVU is also reported without them (`fvu_typical`: tokens within
MASSIVE_NORM_RATIO x the median norm), which says how much of a difference between two SAEs is
those tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from trainer.data.activations import ActivationError, batches
from trainer.saes.base import SAE

MASSIVE_NORM_RATIO = 4.0
"""A token is massive when its norm exceeds this multiple of the median norm of the first eval batch
(the short recipe's max_norm_ratio, trainer/training/massive_tokens.py)."""


@dataclass
class EvalResult:
    """Metrics of one SAE on one set of tokens (raw activation units)."""

    l0: float
    """Mean number of active latents per token."""
    fvu: float
    """Fraction of variance unexplained."""
    fvu_typical: float
    """FVU over the tokens that are not massive (norm within MASSIVE_NORM_RATIO x the median), around
    their own mean."""
    massive_fraction: float
    """Share of the tokens that are massive."""
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
    typ_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)
    sum_sq = err = l0 = typ_sq = typ_err = 0.0
    seen = typical = 0
    limit: Tensor | None = None  # the massive-token norm, from the first batch
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, disable=not progress, desc="eval")
    for batch in batches(chunks, min(batch_size, n_tokens), keep_tail=True):
        x = batch[: n_tokens - seen].to(device).float()  # (B, d_in)
        f = sae.encode(x)  # (B, d_sae)
        x_hat = sae.decode(f)  # (B, d_in)
        active = f > 0
        fires += active.sum(0, dtype=torch.float64)
        l0 += float(active.sum())
        sq_err = (x_hat - x).double().pow(2).sum(1)  # (B,)
        err += float(sq_err.sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        norms = x.norm(dim=1)  # (B,)
        if limit is None:
            limit = MASSIVE_NORM_RATIO * norms.median()
        keep = norms <= limit  # (B,) not massive
        typ_err += float(sq_err[keep].sum())
        typ_x += x[keep].double().sum(0)
        typ_sq += float(x[keep].double().pow(2).sum())
        typical += int(keep.sum())
        seen += x.shape[0]
        bar.update(x.shape[0])
        if seen >= n_tokens:
            break
    bar.close()
    if seen == 0:
        raise ActivationError("no tokens to evaluate on")
    total_var = sum_sq - float(sum_x.pow(2).sum()) / seen  # sum ||x - mean||^2
    typical_var = typ_sq - float(typ_x.pow(2).sum()) / typical if typical else 0.0
    freq = fires / seen
    return EvalResult(
        l0=l0 / seen,
        fvu=err / total_var if total_var > 0 else float("nan"),
        fvu_typical=typ_err / typical_var if typical_var > 0 else float("nan"),
        massive_fraction=(seen - typical) / seen,
        mse=err / seen,
        dead_fraction=float((fires == 0).double().mean()),
        dense_fraction_1pct=float((freq > 0.01).double().mean()),
        dense_fraction_10pct=float((freq > 0.10).double().mean()),
        tokens=seen,
    )
