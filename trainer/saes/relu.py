"""ReLU SAE (Bricken et al. 2023), the vanilla baseline: f = relu(pre), decoder-norm-weighted L1."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.saes.base import SAE, StepOutput


class ReLUSAE(SAE):
    """Vanilla SAE (Bricken et al. 2023): f = relu(pre), penalty lambda * sum_i f_i ||d_i||."""

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(x))

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        f = torch.relu(self.pre_acts(x))  # (B, d_sae)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        # Decoder-norm weighted L1: invariant to trading scale between f_i and d_i.
        sparsity = (f @ self.W_dec.norm(dim=1)).mean()
        zero = mse.new_zeros(())
        return StepOutput(mse + coeff * sparsity, mse, sparsity, zero, x_hat.detach(), f.detach() > 0)
