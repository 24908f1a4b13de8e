"""Resampling dead latents (a named deviation for short runs; the paper does not resample).

A latent that has not fired for `dead_tokens` tokens gets no gradient and never recovers. Every
`resample_every` steps (until the learning-rate decay starts) each dead latent restarts at the
direction of the reconstruction error of one token of the current batch, drawn with probability
proportional to its squared error (Bricken et al. 2023): its decoder row becomes that unit direction,
its encoder column the same direction at a fifth of the live latents' mean encoder norm, its encoder
bias 0, its JumpReLU threshold the quantile of its new pre-activations at the live latents' mean
firing rate, and its Adam moments those of an average live latent (zero first moment, the live
latents' mean second moment), so that its first updates are not outsized.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.saes.base import SAE
from trainer.training.data_init import quantile_thresholds

ENCODER_SCALE = 0.2
"""A resampled latent's encoder norm, as a fraction of the live latents' mean (Bricken et al.)."""


@torch.no_grad()
def resample_dead(
    sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor, x_hat: Tensor, l0: float, generator: torch.Generator
) -> int:
    """Restart the latents dead by sae.tokens_since_fired at error directions of the batch x (B, d_in)
    with reconstruction x_hat (B, d_in), in normalised units, where l0 latents fired per token;
    returns how many were restarted."""
    dead = sae.tokens_since_fired >= sae.dead_tokens  # (d_sae,)
    n_dead = int(dead.sum())
    if n_dead == 0 or n_dead == dead.numel():
        return 0
    err = x.float() - x_hat.float()  # (B, d_in)
    weights = err.pow(2).sum(1)  # (B,)
    if float(weights.sum()) <= 0:
        return 0
    picks = torch.multinomial(weights.cpu(), n_dead, replacement=n_dead > x.shape[0], generator=generator)
    rows = nn.functional.normalize(err[picks.to(err.device)], dim=1)  # (n_dead, d_in)
    idx = dead.nonzero().squeeze(1)  # (n_dead,)
    live = ~dead
    enc_norm = float(sae.W_enc[:, live].norm(dim=0).mean())
    sae.W_dec[idx] = rows.to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (rows.T * (ENCODER_SCALE * enc_norm)).to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0.0
    if sae.threshold_parameters():
        rate = min(0.5, max(1.0 / x.shape[0], l0 / int(live.sum())))  # the live latents' mean firing rate
        sae.init_thresholds(quantile_thresholds(sae.pre_acts(x.float())[:, idx], rate), idx)
    reset_moments(sae, optimizer, idx, live)
    sae.tokens_since_fired[idx] = 0
    return n_dead


@torch.no_grad()
def reset_moments(sae: SAE, optimizer: torch.optim.Optimizer, idx: Tensor, live: Tensor) -> None:
    """Adam's moments of latents idx's entries: exp_avg 0, exp_avg_sq the live (d_sae,) latents' mean.

    A latent that has had no gradient for hundreds of steps has exp_avg_sq near 0, so the first
    gradient it gets again moves every entry by about lr / sqrt(1 - beta2^t), 10-30x the learning
    rate: with this reset its first updates are an average live latent's size."""
    if idx.numel() == 0 or not bool(live.any()):
        return
    slices = {id(sae.W_dec): 0, id(sae.W_enc): 1, id(sae.b_enc): 0}
    for param in sae.threshold_parameters():
        slices[id(param)] = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            dim = slices.get(id(param))
            state = optimizer.state.get(param)
            if dim is None or not state or "exp_avg" not in state:
                continue
            state["exp_avg"].index_fill_(dim, idx, 0.0)
            second = state["exp_avg_sq"]
            typical = second.index_select(dim, live.nonzero().squeeze(1)).mean(dim, keepdim=True)
            second.index_copy_(dim, idx, typical.expand_as(second.index_select(dim, idx)).contiguous())


@torch.no_grad()
def seed_newly_dead(sae: SAE, optimizer: torch.optim.Optimizer, was_dead: Tensor) -> None:
    """JumpReLU's dead_aux: give the latents that have just become dead (dead now, not in was_dead, a
    (d_sae,) bool) an average live latent's Adam moments before the auxiliary loss first reaches them.

    Without it the first AuxK gradients after a silence of dead_tokens move a dead latent's encoder
    column by 10-30x the learning rate per entry; at width 4,096 on the sweep's cache the revived
    latents then fired with outsized values and a run's training FVU jumped from 0.16 to over 1,000
    (README, "What was tried for short runs")."""
    dead = sae.tokens_since_fired >= sae.dead_tokens  # (d_sae,)
    newly = dead & ~was_dead
    if bool(newly.any()):
        reset_moments(sae, optimizer, newly.nonzero().squeeze(1), ~dead)


__all__ = ["ENCODER_SCALE", "resample_dead", "reset_moments", "seed_newly_dead"]
