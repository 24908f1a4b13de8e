"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; no penalty, an AuxK loss."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.saes import sparse
from trainer.saes.aux_loss import aux_loss
from trainer.saes.base import SAE, StepOutput


def _sorted_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of pre (B, d_sae), chosen by the same `pre.topk` call as
    `TopKSAE._topk` (so ties pick the same columns): (columns (B, k) ascending, their pre (B, k))."""
    values, indices = pre.topk(k, dim=-1, sorted=False)  # (B, k)
    cols, order = indices.sort(dim=-1)  # (B, k): ascending within each row, as CSR needs
    return cols, values.gather(-1, order)


class SparseTopKStep(torch.autograd.Function):
    """The TopK training step from the input to the bias-free reconstruction and AuxK's, sparsely.

    The same function and gradients as `pre_acts` + `_topk` + `decode` (without b_dec) and, when
    k_aux > 0, AuxK's `_topk` over the dead latents' pre-activations + `f_aux @ W_dec`: pre =
    x @ W_enc + bias is the one dense matmul, and the two top-k selections over it are the only
    other (B, d_sae) work. f and f_aux are held at their k and k_aux selected entries per row
    (trainer.saes.sparse.Pattern), including selected entries whose pre <= 0: their f is 0 and,
    as relu'(0) = relu'(< 0) = 0, they pass no gradient. Decoding, dL/df (sampled products) and
    the W_dec, W_enc and bias gradients of both terms cost O(B x (k + k_aux) x d_in). W_dec gets
    gradient from both reconstructions, pre from both entry sets (summed where they overlap).
    x gets no gradient (it is data). Also returns the per-token L0 and the (B, d_sae) f > 0 mask.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, w_enc: Tensor, bias: Tensor, w_dec: Tensor, dead: Tensor, k: int, k_aux: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # x (B, d_in), w_enc (d_in, d_sae), bias (d_sae,), w_dec (d_sae, d_in), dead (d_sae,) bool
        # (B, d_sae): the one dense matmul (bf16 under autocast); everything after it in fp32
        pre = torch.addmm(bias, x, w_enc).float()
        batch, d_sae = pre.shape
        cols, picked = _sorted_topk(pre, k)  # (B, k) each
        on = sparse.Pattern.of_columns(cols, d_sae)
        values = torch.relu(picked.reshape(-1))  # (B * k,) f at its selected entries (0 where pre <= 0)
        x_hat = sparse.decode(on, values, w_dec)  # (B, d_in)
        active = torch.zeros(batch, d_sae, dtype=torch.bool, device=pre.device)
        fired = picked > 0  # (B, k) bool: f > 0 at the selected entries
        active.scatter_(-1, cols, fired)  # (B, d_sae) bool: f > 0
        l0 = fired.sum(-1, dtype=pre.dtype)  # (B,), from the (B, k) entries (not the (B, d_sae) mask)
        patterns = [on]
        saved = [values]
        if k_aux > 0:
            # AuxK: the k_aux largest pre-activations among the dead latents (pre is not needed after)
            aux_cols, aux_picked = _sorted_topk(pre.masked_fill_(~dead, float("-inf")), k_aux)  # (B, k_aux) each
            aux_on = sparse.Pattern.of_columns(aux_cols, d_sae)
            aux_values = torch.relu(aux_picked.reshape(-1))  # (B * k_aux,)
            aux_hat = sparse.decode(aux_on, aux_values, w_dec)  # (B, d_in)
            patterns.append(aux_on)
            saved.append(aux_values)
        else:
            aux_hat = x_hat.new_zeros(batch, 0)  # (B, 0): no dead latents, no AuxK term
        ctx.save_for_backward(x, w_dec, *saved)
        ctx.patterns = patterns
        ctx.mark_non_differentiable(l0, active)
        ctx.set_materialize_grads(False)  # no (B, d_sae) zeros for the mask's gradient
        return x_hat, aux_hat, l0, active

    @staticmethod
    def backward(
        ctx, grad_x_hat: Tensor | None, grad_aux_hat: Tensor | None, _grad_l0: None, _grad_active: None
    ) -> tuple[None, Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        x, w_dec, *saved = ctx.saved_tensors
        grads: tuple[Tensor, Tensor, Tensor] | None = None
        for pattern, values, grad_hat in zip(ctx.patterns, saved, (grad_x_hat, grad_aux_hat), strict=False):
            if grad_hat is None:  # that reconstruction is not in the loss (grads are not materialised)
                continue
            grad_hat = grad_hat.contiguous()
            grad_f = sparse.sampled_products(pattern, grad_hat, w_dec)  # (nnz,): dL/df at the selected entries
            grad_pre = torch.where(values > 0, grad_f, 0.0)  # (nnz,): relu' = 1 where f > 0, else 0
            term = sparse.weight_grads(pattern, values=values, grad_pre=grad_pre, x=x, grad_x_hat=grad_hat)
            grads = term if grads is None else (grads[0] + term[0], grads[1] + term[1], grads[2] + term[2])
        if grads is None:
            return None, None, None, None, None, None, None
        grad_w_enc, grad_bias, grad_w_dec = grads
        return None, grad_w_enc, grad_bias, grad_w_dec, None, None, None


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep the k largest pre-activations, relu; AuxK loss.

    AuxK reconstructs the residual x - x_hat from the k_aux largest pre-activations of the
    dead latents (not fired for `dead_tokens`), normalised by the residual's variance as in
    OpenAI's reference code, weighted by alpha = 1/32.
    """

    b_dec_init = "mean"
    has_sparse_step = True

    def _topk(self, pre: Tensor, k: int) -> Tensor:
        values, indices = pre.topk(k, dim=-1, sorted=False)  # (B, k)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))  # (B, d_sae)

    def encode(self, x: Tensor) -> Tensor:
        return self._topk(self.pre_acts(x), self.cfg.k)

    def _aux_k(self) -> tuple[Tensor, int]:
        """The dead latents (d_sae,) bool and how many AuxK uses: min(k_aux, their number), 0 if none."""
        dead = self.tokens_since_fired >= self.dead_tokens  # (d_sae,)
        n_dead = int(dead.sum())
        return dead, min(self.cfg.resolved_k_aux, n_dead)

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        pre = self.pre_acts(x)  # (B, d_sae)
        f = self._topk(pre, self.cfg.k)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = mse.new_zeros(())
        dead, k_aux = self._aux_k()
        if k_aux > 0:
            residual = (x - x_hat).detach()  # (B, d_in)
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            f_aux = self._topk(dead_pre, k_aux)
            residual_hat = f_aux @ self.W_dec  # (B, d_in), no bias: it models a residual
            aux = aux_loss(residual_hat, residual)
        sparsity = (f.detach() > 0).sum(-1, dtype=f.dtype).mean()
        return StepOutput(mse + coeff * aux, mse, sparsity, aux, x_hat.detach(), f.detach() > 0)

    def sparse_training_step(self, x: Tensor, coeff: float) -> StepOutput:
        # The same loss as training_step, with f and f_aux kept at their selected entries (SparseTopKStep).
        bias = self.b_enc - self.b_dec @ self.W_enc if self.cfg.use_pre_enc_bias else self.b_enc  # (d_sae,)
        dead, k_aux = self._aux_k()
        decoded, residual_hat, l0, active = SparseTopKStep.apply(
            x, self.W_enc, bias, self.W_dec, dead, self.cfg.k, k_aux
        )
        x_hat = decoded + self.b_dec  # (B, d_in)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = mse.new_zeros(())
        if k_aux > 0:
            aux = aux_loss(residual_hat, (x - x_hat).detach())  # residual_hat (B, d_in), no bias
        sparsity = l0.mean()
        return StepOutput(mse + coeff * aux, mse, sparsity, aux, x_hat.detach(), active)
