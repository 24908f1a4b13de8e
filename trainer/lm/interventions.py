"""Interventions on an SAE's features inside a model's forward pass, at the SAE's layer and site.

Two kinds, on the site's activations x (B, S, d_in) in raw units:

- `Add(feature, strength)`: x + strength * W_dec[feature] (steering along the decoder direction);
- `Clamp(feature, value)`: x -> x_hat' + (x - x_hat), where x_hat is the SAE's reconstruction of x
  and x_hat' the reconstruction with f[feature] set to `value`: the SAE's error term is kept, so
  everything the SAE does not explain stays as it was. `ablate(feature)` is the clamp to 0.

For the linear decoder of every architecture here (x_hat = f @ W_dec + b_dec) the clamp is
x + (value - f[feature]) * W_dec[feature]; it is computed in that form, without the rounding of two
reconstructions, so a clamp to the feature's current value adds an exact zero, and ablating a
feature that does not fire changes nothing at all. Several clamps of one feature: the last wins.
Clamps read f of the unmodified x; adds are applied after them.

`intervene` installs the hook for a block (`with intervene(...): model(...)`); with an empty list
it installs nothing at all, so the model runs exactly as without it. The hook can act on chosen
batch rows only (a steered row next to a baseline row) and from a position on; positions are
counted over the forward passes of the block, so a KV-cached generation (the prompt, then one token
per pass) reaches every new position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.lm.sites import splice
from trainer.saes.base import SAE


class InterventionError(ValueError):
    """An intervention the SAE cannot apply: a feature index out of range, a value that is not finite."""


@dataclass(frozen=True)
class Add:
    """Add `strength` times the feature's decoder direction to the activations (raw units)."""

    feature: int
    """Feature index, 0 <= feature < d_sae."""
    strength: float
    """Multiple of W_dec[feature] added (the SAE's raw activation units; negative subtracts)."""


@dataclass(frozen=True)
class Clamp:
    """Set the feature's activation to `value` through the SAE's reconstruction, keeping its error term."""

    feature: int
    """Feature index, 0 <= feature < d_sae."""
    value: float
    """The activation f[feature] is set to (0 ablates the feature)."""


Intervention = Add | Clamp
"""One intervention on one feature."""


def ablate(feature: int) -> Clamp:
    """Zero a feature through the error term: Clamp(feature, 0.0)."""
    return Clamp(feature, 0.0)


def check_interventions(interventions: Sequence[Intervention], d_sae: int) -> None:
    """InterventionError naming the first intervention whose feature is out of range or whose number is not finite."""
    for i, item in enumerate(interventions):
        if not isinstance(item, Add | Clamp):
            raise InterventionError(f"intervention {i} is neither Add nor Clamp: {item!r}")
        if isinstance(item.feature, bool) or not isinstance(item.feature, int) or not 0 <= item.feature < d_sae:
            raise InterventionError(
                f"intervention {i}: feature {item.feature} is out of range: this SAE has {d_sae} features "
                f"(0 to {d_sae - 1})"
            )
        number = item.strength if isinstance(item, Add) else item.value
        if not math.isfinite(number):
            raise InterventionError(f"intervention {i}: {number} is not a finite number")


@torch.no_grad()
def apply_interventions(x: Tensor, sae: SAE, interventions: Sequence[Intervention]) -> Tensor:
    """(N, d_in) activations -> (N, d_in) with the interventions applied (module docstring); x's dtype kept.

    The change is formed in float32 (the SAE's dtype) and added to x in float32; where it is zero, x comes
    back bit for bit.
    """
    W_dec = sae.W_dec  # (d_sae, d_in)
    delta = torch.zeros(x.shape, dtype=W_dec.dtype, device=x.device)  # (N, d_in)
    clamps = {item.feature: item.value for item in interventions if isinstance(item, Clamp)}  # the last one wins
    if clamps:
        f = sae.encode(x.to(W_dec.dtype))  # (N, d_sae), of the unmodified x
        features = torch.tensor(list(clamps), dtype=torch.long, device=x.device)  # (C,)
        values = torch.tensor(list(clamps.values()), dtype=W_dec.dtype, device=x.device)  # (C,)
        change = values - f[:, features]  # (N, C): value - current value
        delta += change @ W_dec[features]  # (N, d_in)
    for item in interventions:
        if isinstance(item, Add):
            delta += item.strength * W_dec[item.feature]  # (d_in,) broadcast over N
    return (x.to(W_dec.dtype) + delta).to(x.dtype)


class InterventionHook:
    """Applies interventions to chosen batch rows from position `start` on; counts the positions it has seen."""

    def __init__(
        self, sae: SAE, interventions: Sequence[Intervention], *, rows: Sequence[int] | None, start: int
    ) -> None:
        self.sae = sae
        self.interventions = list(interventions)
        self.rows = None if rows is None else list(rows)
        self.start = start
        self.seen = 0
        """Positions seen by earlier forward passes of this block (the KV cache's length)."""
        self.calls = 0
        """Forward passes that reached the hook."""

    def __call__(self, x: Tensor) -> Tensor:
        """(B, S, d_in) activations of one forward pass -> the replacement (x itself where nothing applies)."""
        S = x.shape[1]
        first = max(self.start - self.seen, 0)  # the first of this pass's positions to change
        self.seen += S
        self.calls += 1
        if first >= S:
            return x
        rows = list(range(x.shape[0])) if self.rows is None else self.rows
        out = x.clone()  # (B, S, d_in)
        part = x[rows, first:]  # (R, S', d_in)
        changed = apply_interventions(part.reshape(-1, part.shape[-1]), self.sae, self.interventions)  # (R*S', d_in)
        out[rows, first:] = changed.reshape(part.shape)
        return out


@contextmanager
def intervene(
    model: nn.Module,
    sae: SAE,
    interventions: Sequence[Intervention],
    *,
    layer: int,
    site: str,
    rows: Sequence[int] | None = None,
    start: int = 0,
) -> Iterator[InterventionHook | None]:
    """Within the block, the site's activations of batch `rows` (None: all) at positions >= `start` get the
    interventions; positions count over the block's forward passes (module docstring).

    An empty list installs no hook (the block yields None): the model runs exactly as without this. The
    caller checks the features against the SAE first (`check_interventions`).
    """
    if not interventions:
        yield None
        return
    hook = InterventionHook(sae, interventions, rows=rows, start=start)
    with splice(model, layer, site, hook):
        yield hook
