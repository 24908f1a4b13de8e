"""JumpReLU SAE (Rajamanoharan et al. 2024b, the paper): f = pre * H(pre - theta), lambda * L0.

The threshold theta and the L0 penalty train through straight-through pseudo-derivatives
(jumprelu.md §2), fused into one autograd function with the activation itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.saes import sparse
from trainer.saes.aux_loss import aux_loss
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


class SparseJumpReLUStep(torch.autograd.Function):
    """The JumpReLU training step from the input to the bias-free reconstruction, computed sparsely.

    The same function and the same pseudo-derivatives as `pre_acts` + `JumpReLUWithL0` + `decode`
    (without b_dec): pre = x @ W_enc + bias is the one dense matmul; f is held at its active
    entries only (trainer.saes.sparse.Pattern); x_hat = f @ W_dec, dL/df at the active and
    in-window entries (sampled products), and the W_dec, W_enc and bias gradients all cost
    O(B x L0 x d_in) instead of O(B x d_sae x d_in). x gets no gradient (it is data).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, w_enc: Tensor, bias: Tensor, threshold: Tensor, w_dec: Tensor, bandwidth: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        # x (B, d_in), w_enc (d_in, d_sae), bias (d_sae,), threshold (d_sae,), w_dec (d_sae, d_in)
        # (B, d_sae): the one dense matmul (bf16 under autocast); everything after it in fp32
        pre = torch.addmm(bias, x, w_enc).float()
        # Active (pre - theta > 0) or in the kernel window (|pre - theta| < eps / 2) implies
        # pre > theta - eps / 2: one pass over (B, d_sae) finds a superset of the entries the backward
        # needs (the margin covers rounding); the exact tests below run on those entries only.
        lower = threshold - bandwidth * (0.5 + 1e-4)  # (d_sae,)
        candidates = sparse.Pattern.of(pre > lower)
        diff = pre[candidates.rows, candidates.cols] - threshold[candidates.cols]  # (m,): as the dense step
        is_active = diff > 0  # (m,) bool: H, strict
        in_window = diff.abs_() < bandwidth / 2  # (m,) bool: K((pre - theta) / eps) = 1
        keep = is_active | in_window  # (m,): every entry whose dL/df the backward uses
        needed = candidates.subset(keep)
        is_active, in_window = is_active[keep], in_window[keep]  # (n,) each
        on = needed.subset(is_active)  # the active entries, in the same row-major order
        values = pre[on.rows, on.cols]  # (nnz,) f at its active entries
        active = torch.zeros_like(pre, dtype=torch.bool)  # (B, d_sae): the mask the trainer reads
        active[on.rows, on.cols] = True
        x_hat = sparse.decode(on, values, w_dec)  # (B, d_in)
        l0 = (on.offsets[1:] - on.offsets[:-1]).to(pre.dtype)  # (B,)
        ctx.save_for_backward(x, threshold, w_dec, values, is_active, in_window)
        ctx.patterns = (on, needed)
        ctx.bandwidth = bandwidth
        ctx.mark_non_differentiable(active)
        ctx.set_materialize_grads(False)  # no (B, d_sae) zeros for the mask's gradient
        return x_hat, l0, active

    @staticmethod
    def backward(
        ctx, grad_x_hat: Tensor | None, grad_l0: Tensor | None, _grad_active: None
    ) -> tuple[None, Tensor, Tensor, Tensor, Tensor, None]:
        x, threshold, w_dec, values, is_active, in_window = ctx.saved_tensors
        on, needed = ctx.patterns
        eps = ctx.bandwidth
        # grads are not materialised: an unused output's is None
        grad_x_hat = torch.zeros_like(x) if grad_x_hat is None else grad_x_hat.contiguous()
        grad_l0 = x.new_zeros(on.shape[0]) if grad_l0 is None else grad_l0
        grad_f = sparse.sampled_products(needed, grad_x_hat, w_dec)  # (n,): dL/df at the needed entries
        # dL/dpre = dL/df where active (d f / d pre = H); the active entries of `needed` are
        # exactly `on`'s, in the same row-major order.
        grad_pre = grad_f[is_active]  # (nnz,)
        grad_w_enc, grad_bias, grad_w_dec = sparse.weight_grads(
            on, values=values, grad_pre=grad_pre, x=x, grad_x_hat=grad_x_hat
        )
        # theta: -(theta / eps) dL/df - (1 / eps) dL/dL0, summed over the in-window entries
        rows, cols = needed.rows[in_window], needed.cols[in_window]
        per_entry = (threshold[cols] * grad_f[in_window] + grad_l0[rows]) / -eps  # (n_window,)
        grad_theta = torch.zeros_like(threshold).index_add_(0, cols, per_entry.to(threshold.dtype))
        return None, grad_w_enc, grad_bias, grad_theta, grad_w_dec, None


def jumprelu_with_l0(pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    """(f, per-token L0) with the paper's straight-through pseudo-derivatives."""
    f, l0, _ = JumpReLUWithL0.apply(pre, threshold, bandwidth)
    return f, l0


class JumpReLUSAE(SAE):
    """The paper's SAE: f = pre * H(pre - theta), trained with lambda * L0 through STEs."""

    has_sparse_step = True

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
        aux = self._dead_aux_loss(x, x_hat.detach())
        # theta > 0, so f > 0 exactly where H(pre - theta) = 1: reuse the mask
        loss = mse + coeff * sparsity + self.cfg.dead_aux * aux
        return StepOutput(loss, mse, sparsity, aux, x_hat.detach(), active)

    def sparse_training_step(self, x: Tensor, coeff: float) -> StepOutput:
        # The same loss as training_step, with f kept at its active entries (SparseJumpReLUStep).
        w_enc = self.W_enc
        bias = self.b_enc - self.b_dec @ w_enc if self.cfg.use_pre_enc_bias else self.b_enc  # (d_sae,)
        decoded, l0, active = SparseJumpReLUStep.apply(
            x.float(), w_enc, bias, self.threshold, self.W_dec, self.cfg.bandwidth
        )
        x_hat = decoded + self.b_dec  # (B, d_in)
        mse = (x_hat - x.float()).pow(2).sum(-1).mean()
        sparsity = l0.mean()
        aux = self._dead_aux_loss(x, x_hat.detach())
        loss = mse + coeff * sparsity + self.cfg.dead_aux * aux
        return StepOutput(loss, mse, sparsity, aux, x_hat.detach(), active)

    def _dead_aux_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """AuxK on the dead latents (SAEConfig.dead_aux; a zero scalar when it is off or none is dead).

        Only the dead latents' columns are encoded (B x n_dead x d_in), so the term costs nothing
        while every latent fires and stays cheap in the sparse step."""
        zero = x.new_zeros((), dtype=torch.float32)
        if self.cfg.dead_aux == 0:
            return zero
        dead = (self.tokens_since_fired >= self.dead_tokens).nonzero().squeeze(1)  # (n_dead,)
        if dead.numel() == 0:
            return zero
        k_aux = min(self.cfg.resolved_k_aux, dead.numel())
        w_enc = self.W_enc[:, dead]  # (d_in, n_dead)
        bias = self.b_enc[dead] - self.b_dec @ w_enc if self.cfg.use_pre_enc_bias else self.b_enc[dead]
        pre = torch.addmm(bias, x, w_enc).float()  # (B, n_dead)
        values, picked = pre.topk(k_aux, dim=-1, sorted=False)  # (B, k_aux) each
        f_aux = torch.zeros_like(pre).scatter_(-1, picked, torch.relu(values))  # (B, n_dead)
        residual = x.float() - x_hat.float()  # (B, d_in), detached by the caller
        residual_hat = f_aux @ self.W_dec[dead].float()  # (B, d_in), no bias: it models a residual
        return aux_loss(residual_hat, residual)

    @torch.no_grad()
    def init_thresholds(self, theta: Tensor, latents: Tensor | None = None) -> None:
        theta = theta.to(self.b_enc.device, torch.float32)  # (n,)
        (param,) = self.threshold_parameters()
        value = theta.log() if self.cfg.threshold_param == "log" else theta
        if latents is None:
            param.copy_(value)
        else:
            param[latents] = value

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [self.log_threshold if self.cfg.threshold_param == "log" else self.raw_threshold]

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
