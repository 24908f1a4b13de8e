"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; no penalty, an AuxK loss."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.saes.base import SAE, StepOutput


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep the k largest pre-activations, relu; AuxK loss.

    AuxK reconstructs the residual x - x_hat from the k_aux largest pre-activations of the
    dead latents (not fired for `dead_tokens`), normalised by the residual's variance as in
    OpenAI's reference code, weighted by alpha = 1/32.
    """

    b_dec_init = "mean"

    def _topk(self, pre: Tensor, k: int) -> Tensor:
        values, indices = pre.topk(k, dim=-1, sorted=False)  # (B, k)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))  # (B, d_sae)

    def encode(self, x: Tensor) -> Tensor:
        return self._topk(self.pre_acts(x), self.cfg.k)

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        pre = self.pre_acts(x)  # (B, d_sae)
        f = self._topk(pre, self.cfg.k)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = mse.new_zeros(())
        dead = self.tokens_since_fired >= self.dead_tokens  # (d_sae,)
        n_dead = int(dead.sum())
        if n_dead > 0:
            residual = (x - x_hat).detach()  # (B, d_in)
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            f_aux = self._topk(dead_pre, min(self.cfg.resolved_k_aux, n_dead))
            residual_hat = f_aux @ self.W_dec  # (B, d_in), no bias: it models a residual
            err = (residual_hat - residual).pow(2).sum(-1).mean()
            var = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
            aux = torch.nan_to_num(err / var)
        sparsity = (f.detach() > 0).sum(-1, dtype=f.dtype).mean()
        return StepOutput(mse + coeff * aux, mse, sparsity, aux, x_hat.detach(), f.detach() > 0)
