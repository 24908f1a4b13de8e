"""Initialisation from the training data: named deviations for short runs (the paper initialises at random).

The paper starts every decoder row at a random direction (He-uniform, then unit norm) and every JumpReLU
threshold at 0.001, so that at step 0 about half the latents fire on every token. In a long run Adam has
time to move the rows into the data's span and lambda to prune the dense start; in a few hundred steps
neither finishes. A random row holds half its mass in the half of the principal directions that carry a
small share of the residual stream's variance (the "quiet" directions), and every time its latent fires
it writes that mass into the reconstruction as noise the model downstream reads (README, "What was tried").

- `decoder_init="data"`: each decoder row starts as one centred training activation (distinct tokens of
  the normalisation sample), scaled to unit norm: its mass sits in the data's directions in proportion
  to their variance. The encoder starts as the decoder's transpose, as the paper's, scaled so that the first
  reconstruction is the least-squares best multiple of itself (`fit_encoder_scale`): data rows overlap each
  other and the tokens far more than random ones, and the unscaled transpose reconstructs many times the input.
- `threshold_init_rate=p` (JumpReLU): each threshold starts at the (1 - p) quantile of its latent's
  pre-activations on the sample, so that every latent fires on a fraction p of tokens from the first
  step instead of half of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.saes.base import SAE

QUANTILE_TOKENS = 16_384
"""Sample tokens the threshold quantiles are read from (enough for a quantile of 1e-3 to rest on 16)."""


def data_directions(sample: Tensor, centre: Tensor, d_sae: int, generator: torch.Generator) -> Tensor:
    """(d_sae, d_in) unit rows: centred activations of distinct tokens of sample (N, d_in), drawn
    without replacement (with replacement once d_sae > N), in normalised units like sample."""
    n = sample.shape[0]
    if d_sae <= n:
        picks = torch.randperm(n, generator=generator)[:d_sae]  # (d_sae,)
    else:
        picks = torch.randint(n, (d_sae,), generator=generator)  # (d_sae,)
    rows = sample[picks].float() - centre.float()  # (d_sae, d_in)
    norms = rows.norm(dim=1, keepdim=True)  # (d_sae, 1)
    # a token at the centre has no direction: give it a random one rather than divide by zero
    flat = norms.squeeze(1) < 1e-8
    if bool(flat.any()):
        rows[flat] = torch.randn(int(flat.sum()), rows.shape[1], generator=generator)
        norms = rows.norm(dim=1, keepdim=True)
    return rows / norms


@torch.no_grad()
def fit_encoder_scale(sae: SAE, probe: Tensor) -> None:
    """Scale W_enc so that the SAE's reconstruction of probe (N, d_in), less b_dec, is the least-squares
    best multiple of what it was (left as it is if that multiple is not positive)."""
    target = probe - sae.b_dec  # (N, d_in)
    first = sae.decode(sae.encode(probe)) - sae.b_dec  # (N, d_in)
    fit = float((first * target).sum() / first.pow(2).sum().clamp_min(1e-12))
    if fit > 0:
        sae.W_enc.mul_(fit)


def quantile_thresholds(pre: Tensor, rate: float) -> Tensor:
    """(d_sae,) thresholds at which each latent fires on a fraction `rate` of the tokens of pre
    (N, d_sae): the (1 - rate) quantile of each column, kept above zero (theta > 0)."""
    if not 0 < rate < 1:
        raise ValueError(f"threshold_init_rate must be in (0, 1), got {rate}")
    # kthvalue on (N, d_sae) per column: the k-th smallest, k = round((1 - rate) * N)
    n = pre.shape[0]
    k = min(n, max(1, round((1 - rate) * n)))
    theta = pre.float().T.contiguous().kthvalue(k, dim=1).values  # (d_sae,): along rows, 3x faster than dim=0
    return theta.clamp_min(1e-6)


__all__ = ["QUANTILE_TOKENS", "data_directions", "fit_encoder_scale", "quantile_thresholds"]
