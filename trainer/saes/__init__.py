"""Sparse autoencoders: JumpReLU (the paper) and the baselines it is compared with.

Layout as Gemma Scope / SAELens: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in),
b_dec (d_in,). Row W_dec[i] is latent i's direction. Each module is the *training form*
(optional pre-encoder bias, inputs in normalised units); `fold` returns the *inference form*
(normalisation scale C and pre-encoder bias folded into the biases and thresholds,
jumprelu.md §3.2), which encodes raw activations exactly as interface.md specifies.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from trainer.training.config import SAEConfig


class StepOutput(NamedTuple):
    """What one training forward pass returns."""

    loss: Tensor
    """Scalar: mse + lambda * sparsity + aux (what is back-propagated)."""
    mse: Tensor
    """Scalar: squared error summed over d_in, averaged over tokens."""
    sparsity: Tensor
    """Scalar: the un-weighted sparsity term (L0 for jumprelu, weighted L1 for relu/gated)."""
    aux: Tensor
    """Scalar: auxiliary loss (AuxK for topk, frozen-decoder reconstruction for gated), else 0."""
    x_hat: Tensor
    """(B, d_in) reconstruction, detached."""
    active: Tensor
    """(B, d_sae) bool: which latents fired (f > 0), detached."""


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
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
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
    def backward(ctx, grad_f: Tensor, grad_l0: Tensor, _grad_active: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
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


class SAE(nn.Module):
    """Common parameters, initialisation, decoding and the decoder-norm constraint."""

    extra_tensors: tuple[str, ...] = ()
    """Names of architecture-specific tensors saved beside the five standard ones."""
    tokens_since_fired: Tensor
    """(d_sae,) buffer: tokens since each latent last fired (dead latents; AuxK for topk)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # Tokens since each latent last fired: dead-latent tracking (and AuxK for topk).
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform decoder with unit-norm rows, encoder = decoder^T (untied), zero biases."""
        nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
        with torch.no_grad():
            self.normalize_decoder()
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    # -- encoding -------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_sae): (x - b_dec) @ W_enc + b_enc, or x @ W_enc + b_enc."""
        if self.cfg.use_pre_enc_bias:
            # Algebraically (x - b_dec) @ W_enc; written so that autograd never forms the
            # (B, d_in) gradient of the centred input (x needs none): saves 2*B*d_in*d_sae FLOPs.
            bias = self.b_enc - self.b_dec @ self.W_enc  # (d_sae,)
            return torch.addmm(bias, x, self.W_enc)
        return torch.addmm(self.b_enc, x, self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_sae) latent activations f."""
        raise NotImplementedError

    def decode(self, f: Tensor) -> Tensor:
        """(B, d_sae) -> (B, d_in): f @ W_dec + b_dec."""
        return torch.addmm(self.b_dec, f, self.W_dec)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_in) reconstruction."""
        return self.decode(self.encode(x))

    def training_step(self, x: Tensor, coeff: float) -> StepOutput:
        """Loss of one batch x (B, d_in) in normalised units with sparsity weight coeff."""
        raise NotImplementedError

    # -- decoder constraint ---------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (after each optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove each row's gradient component along the row (before each optimiser step)."""
        grad = self.W_dec.grad
        if grad is None:
            return
        along = (grad * self.W_dec).sum(dim=1, keepdim=True)  # (d_sae, 1)
        grad.sub_(along * self.W_dec)

    @torch.no_grad()
    def after_step(self) -> None:
        """Hook for parameter constraints after an optimiser step (e.g. theta > 0)."""

    @torch.no_grad()
    def update_dead(self, fired: Tensor, n_tokens: int) -> None:
        """fired: (d_sae,) bool, latents that fired in the last (global) batch of n_tokens."""
        self.tokens_since_fired.add_(n_tokens)
        self.tokens_since_fired[fired] = 0

    # -- inference form -------------------------------------------------------------------
    def inference_tensors(self) -> dict[str, Tensor]:
        """The standard tensors and the architecture's extras, as stored on disk."""
        return {
            "W_enc": self.W_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_enc": self.b_enc.detach(),
            "b_dec": self.b_dec.detach(),
        }

    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of inference_tensors (shapes already checked by the loader)."""
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(self, name).copy_(tensors[name])

    @torch.no_grad()
    def fold(self, scale: float = 1.0) -> SAE:
        """The inference form: input scale C and pre-encoder bias folded in (GS App. A).

        Keeps W_enc and W_dec; b_enc' = C (b_enc - b_dec @ W_enc), b_dec' = C b_dec, and
        the subclasses scale their thresholds / magnitude biases. The result encodes raw
        activations x_raw and its latents are C times the training ones.
        """
        folded = copy.deepcopy(self)
        centre = self.b_dec @ self.W_enc if self.cfg.use_pre_enc_bias else 0.0  # (d_sae,)
        folded.b_enc.copy_(scale * (self.b_enc - centre))
        folded.b_dec.copy_(scale * self.b_dec)
        self._fold_extras(folded, scale, centre)
        folded.cfg = dataclasses.replace(self.cfg, use_pre_enc_bias=False)
        return folded

    def _fold_extras(self, folded: SAE, scale: float, centre: Tensor | float) -> None:
        """Subclass part of fold."""


class JumpReLUSAE(SAE):
    """The paper's SAE: f = pre * H(pre - theta), trained with lambda * L0 through STEs."""

    extra_tensors = ("threshold",)

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


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep the k largest pre-activations, relu; AuxK loss.

    AuxK reconstructs the residual x - x_hat from the k_aux largest pre-activations of the
    dead latents (not fired for `dead_tokens`), normalised by the residual's variance as in
    OpenAI's reference code, weighted by alpha = 1/32.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.dead_tokens = 10_000_000  # set by the trainer from TrainConfig.dead_tokens

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


class GatedSAE(SAE):
    """Gated SAE (Rajamanoharan et al. 2024a): a gate chooses, a magnitude path sizes.

    pi_gate = x W_enc + b_enc, pi_mag = (x W_enc) * exp(r_mag) + b_mag (shared W_enc),
    f = H(pi_gate) * relu(pi_mag). Loss = mse + lambda * sum_i relu(pi_gate)_i ||d_i||
    + || x - (relu(pi_gate) W_dec* + b_dec*) ||^2 with the decoder frozen (*) in the aux term.
    """

    extra_tensors = ("r_mag", "b_mag")

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


SAE_CLASSES: dict[str, type[SAE]] = {
    "jumprelu": JumpReLUSAE,
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "gated": GatedSAE,
}


def build_sae(cfg: SAEConfig) -> SAE:
    """A freshly initialised SAE of cfg.architecture."""
    return SAE_CLASSES[cfg.architecture](cfg)
