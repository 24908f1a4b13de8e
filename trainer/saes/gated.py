"""Gated SAE (Rajamanoharan et al. 2024a): a gate path chooses the latents, a magnitude path sizes them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig


class GatedSAE(SAE):
    """Gated SAE (Rajamanoharan et al. 2024a): a gate chooses, a magnitude path sizes.

    pi_gate = x W_enc + b_enc, pi_mag = (x W_enc) * exp(r_mag) + b_mag (shared W_enc),
    f = H(pi_gate) * relu(pi_mag). Loss = mse + lambda * sum_i relu(pi_gate)_i ||d_i||
    + || x - (relu(pi_gate) W_dec* + b_dec*) ||^2 with the decoder frozen (*) in the aux term.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gate = self.pre_acts(x)  # (B, d_sae)
        mag = (gate - self.b_enc) * self.r_mag.exp() + self.b_mag  # one matmul for both paths
        return gate, mag

    def encode(self, x: Tensor) -> Tensor:
        gate, mag = self._paths(x)
        return (gate > 0) * torch.relu(mag)

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        gate, mag = self._paths(x)
        active = gate > 0  # H has zero derivative: the gate learns from the two terms below
        f = active * torch.relu(mag)  # (B, d_sae)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        gate_relu = torch.relu(gate)
        sparsity = (gate_relu @ self.W_dec.norm(dim=1)).mean()
        x_via_gate = torch.addmm(self.b_dec.detach(), gate_relu, self.W_dec.detach())
        aux = (x_via_gate - x).pow(2).sum(-1).mean()
        loss = mse + coeff * sparsity + aux
        return StepOutput(loss, mse, sparsity, aux, x_hat.detach(), f.detach() > 0)

    def inference_tensors(self) -> dict[str, Tensor]:
        return {**super().inference_tensors(), "r_mag": self.r_mag.detach(), "b_mag": self.b_mag.detach()}

    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_inference_tensors(tensors)
        with torch.no_grad():
            self.r_mag.copy_(tensors["r_mag"])
            self.b_mag.copy_(tensors["b_mag"])

    def _fold_extras(self, folded: SAE, scale: float, centre: Tensor | float) -> None:
        assert isinstance(folded, GatedSAE)
        folded.b_mag.copy_(scale * (self.b_mag - centre * self.r_mag.exp()))
