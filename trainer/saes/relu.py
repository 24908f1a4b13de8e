"""ReLU SAE (Bricken et al. 2023), the vanilla baseline: f = relu(pre), decoder-norm-weighted L1."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.saes import sparse
from trainer.saes.base import SAE, StepOutput


class SparseReLUStep(torch.autograd.Function):
    """The ReLU training step from the input to the bias-free reconstruction and the L1 term, sparsely.

    The same function and gradients as relu(x @ W_enc + bias) @ W_dec and f @ norms, with f held at
    its active (positive) entries (trainer.saes.sparse): everything past the encoder matmul costs
    O(B x L0 x d_in). x gets no gradient (it is data).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, w_enc: Tensor, bias: Tensor, w_dec: Tensor, norms: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        # x (B, d_in), w_enc (d_in, d_sae), bias (d_sae,), w_dec (d_sae, d_in), norms (d_sae,)
        # (B, d_sae): the one dense matmul (bf16 under autocast); everything after it in fp32
        pre = torch.addmm(bias, x, w_enc).float()
        active = pre > 0  # (B, d_sae) bool
        on = sparse.Pattern.of(active)
        values = pre[on.rows, on.cols]  # (nnz,) f at its active entries
        x_hat = sparse.decode(on, values, w_dec)  # (B, d_in)
        weighted = torch.zeros(on.shape[0], dtype=pre.dtype, device=pre.device)
        weighted.index_add_(0, on.rows, values * norms[on.cols])  # (B,): sum_i f_i ||d_i||
        ctx.save_for_backward(x, w_dec, norms, values)
        ctx.pattern = on
        ctx.mark_non_differentiable(active)
        ctx.set_materialize_grads(False)  # no (B, d_sae) zeros for the mask's gradient
        return x_hat, weighted, active

    @staticmethod
    def backward(
        ctx, grad_x_hat: Tensor | None, grad_weighted: Tensor | None, _grad_active: None
    ) -> tuple[None, Tensor, Tensor, Tensor, Tensor]:
        x, w_dec, norms, values = ctx.saved_tensors
        on = ctx.pattern
        # grads are not materialised: an unused output's is None
        grad_x_hat = torch.zeros_like(x) if grad_x_hat is None else grad_x_hat.contiguous()
        grad_weighted = x.new_zeros(on.shape[0]) if grad_weighted is None else grad_weighted
        # dL/df = (dL/dx_hat) . d_i + (dL/dweighted) ||d_i||, needed at the active entries only
        grad_f = sparse.sampled_products(on, grad_x_hat, w_dec) + grad_weighted[on.rows] * norms[on.cols]
        grad_w_enc, grad_bias, grad_w_dec = sparse.weight_grads(
            on, values=values, grad_pre=grad_f, x=x, grad_x_hat=grad_x_hat
        )
        grad_norms = torch.zeros_like(norms).index_add_(0, on.cols, values * grad_weighted[on.rows])  # (d_sae,)
        return None, grad_w_enc, grad_bias, grad_w_dec, grad_norms


class ReLUSAE(SAE):
    """Vanilla SAE (Bricken et al. 2023): f = relu(pre), penalty lambda * sum_i f_i ||d_i||."""

    has_sparse_step = True

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

    def sparse_training_step(self, x: Tensor, coeff: float) -> StepOutput:
        # The same loss as training_step, with f kept at its active entries (SparseReLUStep).
        bias = self.b_enc - self.b_dec @ self.W_enc if self.cfg.use_pre_enc_bias else self.b_enc  # (d_sae,)
        decoded, weighted, active = SparseReLUStep.apply(x, self.W_enc, bias, self.W_dec, self.W_dec.norm(dim=1))
        x_hat = decoded + self.b_dec  # (B, d_in)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        sparsity = weighted.mean()
        return StepOutput(mse + coeff * sparsity, mse, sparsity, mse.new_zeros(()), x_hat.detach(), active)
