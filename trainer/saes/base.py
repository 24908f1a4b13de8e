"""The SAE base class: parameters, initialisation, decoding, the decoder-norm constraint, folding.

Layout as Gemma Scope / SAELens: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in),
b_dec (d_in,). Row W_dec[i] is latent i's direction. Each module is the *training form*
(optional pre-encoder bias, inputs in normalised units); `fold` returns the *inference form*
(normalisation scale C and pre-encoder bias folded into the biases and thresholds,
jumprelu.md §3.2), which encodes raw activations exactly as interface.md specifies.

An architecture subclasses `SAE` in its own module (jumprelu.py, relu.py, topk.py, gated.py)
and is registered in registry.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from trainer.saes.config import BDecInit, SAEConfig


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


class SAE(nn.Module):
    """Common parameters, initialisation, decoding and the decoder-norm constraint.

    A subclass implements `encode` and `training_step`; one with extra tensors (those its
    registry spec lists) also extends `inference_tensors`, `load_inference_tensors` and
    `_fold_extras`.
    """

    b_dec_init: ClassVar[BDecInit] = "zeros"
    """Where its paper starts b_dec when TrainConfig.b_dec_init is None: zeros, or the data mean."""
    tokens_since_fired: Tensor
    """(d_sae,) buffer: tokens since each latent last fired (dead latents; AuxK for topk)."""
    dead_tokens: int
    """A latent that has not fired for this many tokens is dead (the trainer sets it from
    TrainConfig.dead_tokens; TopK's AuxK loss reads it)."""

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
        self.dead_tokens = 10_000_000
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform decoder with unit-norm rows, encoder = decoder^T (untied), zero biases."""
        nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
        with torch.no_grad():
            self.normalize_decoder()
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    @torch.no_grad()
    def init_directions(self, rows: Tensor) -> None:
        """Start from given decoder directions rows (d_sae, d_in), unit norm: W_dec = rows, W_enc = rows^T
        (trainer.training.data_init: decoder_init="data")."""
        self.W_dec.copy_(rows)
        self.normalize_decoder()
        self.W_enc.copy_(self.W_dec.T)

    def threshold_parameters(self) -> list[nn.Parameter]:
        """The parameters that hold per-latent thresholds (empty: the architecture has none)."""
        return []

    def init_thresholds(self, theta: Tensor, latents: Tensor | None = None) -> None:
        """Set the thresholds of `latents` (n,) int64 (None: all d_sae) to theta (n,), in normalised units
        (threshold_init_rate, resampling)."""
        raise ValueError(f"{self.cfg.architecture} SAEs have no thresholds to initialise")

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

    has_sparse_step: ClassVar[bool] = False
    """Whether `sparse_training_step` exists: the same step with f held at its active entries only."""

    def sparse_training_step(self, x: Tensor, coeff: float) -> StepOutput:
        """`training_step` computed sparsely: the same loss, gradients equal within float tolerance,
        at a cost beyond the encoder matmul that grows with B x L0 x d_in (trainer.saes.sparse)."""
        raise NotImplementedError(f"{self.cfg.architecture} SAEs have no sparse training step yet")

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
