"""A fifth architecture for the registry tests: offset ReLU, f = relu(pre - offset), L1 penalty.

Small but honest: each latent learns its own offset (an extra (d_sae,) tensor, so the file
formats must carry it), and the loss is mse + lambda * decoder-norm-weighted L1, so the CLI's
--l1-coeff and the sparsity warm-up apply. Registered only by the tests' fixture.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig
from trainer.saes.registry import ArchitectureSpec

TOY = ArchitectureSpec(
    name="toy",
    summary="Offset ReLU (tests only): f = relu(pre - offset), lambda * decoder-norm-weighted L1",
    knob="lambda",
    penalty="l1",
    default_coeff=5e-3,
    sae_class_path="tests.trainer.saes.toy_arch:OffsetReLUSAE",
    extra_tensors=("offset",),
)


class OffsetReLUSAE(SAE):
    """f = relu(pre - offset): a ReLU SAE whose latents each learn where they start firing."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.offset = nn.Parameter(torch.zeros(cfg.d_sae))  # (d_sae,)

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(x) - self.offset)  # (B, d_sae)

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        f = self.encode(x)  # (B, d_sae)
        x_hat = self.decode(f)  # (B, d_in)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        sparsity = (f @ self.W_dec.norm(dim=1)).mean()
        zero = mse.new_zeros(())
        return StepOutput(mse + coeff * sparsity, mse, sparsity, zero, x_hat.detach(), f.detach() > 0)

    def inference_tensors(self) -> dict[str, Tensor]:
        return {**super().inference_tensors(), "offset": self.offset.detach()}

    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_inference_tensors(tensors)
        with torch.no_grad():
            self.offset.copy_(tensors["offset"])

    def _fold_extras(self, folded: SAE, scale: float, centre: Tensor | float) -> None:
        # The inference form's pre-activations are scale times the training ones: so is the offset.
        assert isinstance(folded, OffsetReLUSAE)
        folded.offset.mul_(scale)
