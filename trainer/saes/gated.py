"""Gated SAE (Rajamanoharan et al. 2024a): a gate path chooses the latents, a magnitude path sizes them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.saes import sparse
from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig


class SparseGatedStep(torch.autograd.Function):
    """The Gated training step from the input to the bias-free reconstructions and the L1 term, sparsely.

    The same function and gradients as `_paths` + H(gate) * relu(mag) + `decode` (without b_dec),
    relu(gate) @ W_dec* (the aux term's frozen decoder: W_dec gets no gradient from it) and
    relu(gate) @ norms. gate = x @ W_enc + bias is the one dense matmul; everything else lives on
    the open gates (gate > 0, a trainer.saes.sparse.Pattern): there relu(gate) = gate, mag =
    (gate - b_enc) * scale + b_mag and f = relu(mag), which is 0 (and passes no gradient) where
    mag <= 0. dL/df and dL/drelu(gate) (sampled products) and the W_dec, W_enc, bias, b_enc,
    scale, b_mag and norms gradients cost O(B x n_open x d_in), n_open the open gates per row.
    W_enc and bias get gradient from both paths (d mag / d gate = scale). x gets no gradient.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w_enc: Tensor,
        bias: Tensor,
        b_enc: Tensor,
        scale: Tensor,
        b_mag: Tensor,
        w_dec: Tensor,
        norms: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # x (B, d_in), w_enc (d_in, d_sae), bias b_enc scale b_mag norms (d_sae,), w_dec (d_sae, d_in)
        # (B, d_sae): the one dense matmul (bf16 under autocast); everything after it in fp32
        gate = torch.addmm(bias, x, w_enc).float()
        active = gate > 0  # (B, d_sae) bool: the open gates, then f > 0 (below)
        on = sparse.Pattern.of(active)
        cols = on.cols
        opened = gate[on.rows, cols]  # (nnz,) gate = relu(gate) at the open gates
        mag = (opened - b_enc[cols]) * scale[cols] + b_mag[cols]  # (nnz,): as _paths, entry by entry
        fires = mag > 0  # (nnz,) bool
        values = torch.relu(mag)  # (nnz,) f at the open gates
        x_hat = sparse.decode(on, values, w_dec)  # (B, d_in)
        x_via_gate = sparse.decode(on, opened, w_dec)  # (B, d_in)
        weighted = torch.zeros(on.shape[0], dtype=gate.dtype, device=gate.device)
        weighted.index_add_(0, on.rows, opened * norms[cols])  # (B,): sum_i relu(gate)_i ||d_i||
        shut = ~fires
        active.index_put_((on.rows[shut], cols[shut]), active.new_zeros(()))  # (B, d_sae): f > 0
        ctx.save_for_backward(x, b_enc, scale, w_dec, norms, opened, values, fires)
        ctx.pattern = on
        ctx.mark_non_differentiable(active)
        ctx.set_materialize_grads(False)  # no (B, d_sae) zeros for the mask's gradient
        return x_hat, x_via_gate, weighted, active

    @staticmethod
    def backward(
        ctx,
        grad_x_hat: Tensor | None,
        grad_x_via_gate: Tensor | None,
        grad_weighted: Tensor | None,
        _grad_active: None,
    ) -> tuple[None, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, b_enc, scale, w_dec, norms, opened, values, fires = ctx.saved_tensors
        on = ctx.pattern
        rows, cols = on.rows, on.cols
        # grads are not materialised (the mask's would be (B, d_sae) zeros): an unused output's is None
        grad_x_hat = torch.zeros_like(x) if grad_x_hat is None else grad_x_hat.contiguous()
        grad_x_via_gate = torch.zeros_like(x) if grad_x_via_gate is None else grad_x_via_gate.contiguous()
        grad_weighted = x.new_zeros(on.shape[0]) if grad_weighted is None else grad_weighted
        grad_f = sparse.sampled_products(on, grad_x_hat, w_dec)  # (nnz,): dL/df at the open gates
        grad_mag = torch.where(fires, grad_f, 0.0)  # (nnz,): relu'(mag)
        # dL/dgate: the frozen-decoder reconstruction, the L1 term, and the magnitude path (d mag / d gate = scale)
        grad_gate = sparse.sampled_products(on, grad_x_via_gate, w_dec)  # (nnz,)
        grad_gate += grad_weighted[rows] * norms[cols] + grad_mag * scale[cols]
        grad_w_enc, grad_bias, grad_w_dec = sparse.weight_grads(
            on, values=values, grad_pre=grad_gate, x=x, grad_x_hat=grad_x_hat
        )
        d_sae = on.shape[1]
        grad_b_enc = torch.zeros(d_sae, dtype=grad_mag.dtype, device=grad_mag.device)
        grad_b_enc.index_add_(0, cols, grad_mag * scale[cols], alpha=-1)  # (d_sae,): mag's -b_enc
        grad_scale = torch.zeros_like(grad_b_enc).index_add_(0, cols, grad_mag * (opened - b_enc[cols]))
        grad_b_mag = torch.zeros_like(grad_b_enc).index_add_(0, cols, grad_mag)  # (d_sae,)
        grad_norms = torch.zeros_like(norms).index_add_(0, cols, opened * grad_weighted[rows])  # (d_sae,)
        return None, grad_w_enc, grad_bias, grad_b_enc, grad_scale, grad_b_mag, grad_w_dec, grad_norms


class GatedSAE(SAE):
    """Gated SAE (Rajamanoharan et al. 2024a): a gate chooses, a magnitude path sizes.

    pi_gate = x W_enc + b_enc, pi_mag = (x W_enc) * exp(r_mag) + b_mag (shared W_enc),
    f = H(pi_gate) * relu(pi_mag). Loss = mse + lambda * sum_i relu(pi_gate)_i ||d_i||
    + || x - (relu(pi_gate) W_dec* + b_dec*) ||^2 with the decoder frozen (*) in the aux term.
    """

    has_sparse_step = True

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

    def sparse_training_step(self, x: Tensor, coeff: float) -> StepOutput:
        # The same loss as training_step, with everything past the encoder matmul on the open gates
        # (SparseGatedStep); the aux term's decoder is frozen inside it, its b_dec here.
        bias = self.b_enc - self.b_dec @ self.W_enc if self.cfg.use_pre_enc_bias else self.b_enc  # (d_sae,)
        decoded, via_gate, weighted, active = SparseGatedStep.apply(
            x, self.W_enc, bias, self.b_enc, self.r_mag.exp(), self.b_mag, self.W_dec, self.W_dec.norm(dim=1)
        )
        x_hat = decoded + self.b_dec  # (B, d_in)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        sparsity = weighted.mean()
        aux = (via_gate + self.b_dec.detach() - x).pow(2).sum(-1).mean()
        loss = mse + coeff * sparsity + aux
        return StepOutput(loss, mse, sparsity, aux, x_hat.detach(), active)

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
