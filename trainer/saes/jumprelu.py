"""JumpReLU SAE (Rajamanoharan et al. 2024b, the paper): f = pre * H(pre - theta), lambda * L0.

The threshold theta and the L0 penalty train through straight-through pseudo-derivatives
(jumprelu.md §2), fused into one autograd function with the activation itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig


class JumpReLUWithL0(torch.autograd.Function):
    """f = pre * H(pre - theta), the per-token L0 = sum_i H(pre_i - theta_i), and H itself.

    Pseudo-derivatives exactly as jumprelu.md §2, with K the rectangle kernel on
    (pre - theta) / eps (open interval (-1/2, 1/2)):
      d f / d theta   = -(theta / eps) * K      d f / d pre  = H(pre - theta)  (no STE in pre)
      d L0 / d theta  = -(1 / eps) * K          d L0 / d pre = 0  (the L0 term trains only theta)
    Fusing both lets the forward pass find the kernel window once, while `pre` is hot; only
    boolean masks are kept for backward. The window holds ~0.05% of entries, so the theta
    gradient is gathered from its nonzero positions instead of two dense (B, d_sae) products.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor, Tensor]:
        # pre (B, d_sae), threshold (d_sae,)
        diff = pre - threshold  # (B, d_sae); its sign is exactly that of pre > threshold
        active = diff > 0  # (B, d_sae) bool: H, strict
        f = torch.where(active, pre, 0.0)  # (B, d_sae)
        l0 = active.view(torch.uint8).sum(-1, dtype=torch.int32).to(pre.dtype)  # (B,)
        window = diff.abs_() < bandwidth / 2  # (B, d_sae) bool: K((pre - theta) / eps) = 1
        ctx.save_for_backward(threshold, active, window)
        ctx.bandwidth = bandwidth
        ctx.mark_non_differentiable(active)
        return f, l0, active

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_l0: Tensor, _grad_active: Tensor) -> tuple[Tensor, Tensor, None]:
        threshold, active, window = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = torch.where(active, grad_f, 0.0)  # (B, d_sae): exact away from the jump
        rows, cols = window.nonzero(as_tuple=True)  # (n_window,) each
        # -(theta / eps) * grad_f  (JumpReLU)  and  -(1 / eps) * grad_l0  (step), inside the window
        per_entry = (threshold[cols] * grad_f[rows, cols] + grad_l0[rows]) / -eps  # (n_window,)
        grad_theta = torch.zeros_like(threshold).index_add_(0, cols, per_entry.to(threshold.dtype))
        return grad_pre, grad_theta, None


def jumprelu_with_l0(pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    """(f, per-token L0) with the paper's straight-through pseudo-derivatives."""
    f, l0, _ = JumpReLUWithL0.apply(pre, threshold, bandwidth)
    return f, l0


class JumpReLUSAE(SAE):
    """The paper's SAE: f = pre * H(pre - theta), trained with lambda * L0 through STEs."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), cfg.threshold_init)
        if cfg.threshold_param == "log":
            self.log_threshold = nn.Parameter(init.log())
        else:
            self.raw_threshold = nn.Parameter(init)

    @property
    def threshold(self) -> Tensor:
        """(d_sae,) theta, always fp32 and positive."""
        if self.cfg.threshold_param == "log":
            return self.log_threshold.exp()
        return self.raw_threshold

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)  # (B, d_sae)
        return pre * (pre > self.threshold)

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        pre = self.pre_acts(x)  # (B, d_sae)
        f, l0, active = JumpReLUWithL0.apply(pre.float(), self.threshold, self.cfg.bandwidth)
        x_hat = self.decode(f.to(pre.dtype))  # (B, d_in)
        mse = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
        sparsity = l0.mean()
        zero = mse.new_zeros(())
        # theta > 0, so f > 0 exactly where H(pre - theta) = 1: reuse the mask
        return StepOutput(mse + coeff * sparsity, mse, sparsity, zero, x_hat.detach(), active)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.cfg.threshold_param == "raw":
            # raw theta must stay positive so that pre * H(pre - theta) == relu(pre) * H(...)
            self.raw_threshold.clamp_(min=1e-6)

    def inference_tensors(self) -> dict[str, Tensor]:
        return {**super().inference_tensors(), "threshold": self.threshold.detach()}

    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_inference_tensors(tensors)
        with torch.no_grad():
            if self.cfg.threshold_param == "log":
                self.log_threshold.copy_(tensors["threshold"].log())
            else:
                self.raw_threshold.copy_(tensors["threshold"])

    def _fold_extras(self, folded: SAE, scale: float, centre: Tensor | float) -> None:
        assert isinstance(folded, JumpReLUSAE)
        if self.cfg.threshold_param == "log":
            folded.log_threshold.add_(math.log(scale))
        else:
            folded.raw_threshold.mul_(scale)
