"""Adam updates bounded per parameter: each gradient element clipped to a multiple of its own history
(a named deviation for small batches).

With the paper's Adam beta1 = 0 an element's update is g / sqrt(v), v the running mean of g^2
(beta2 0.999). A batch unlike the ones before it (at small batches, the rare one that holds a massive
activation: README, "Massive activations and FVU") gives many elements a g tens of times sqrt(v), and
each moves by that many learning rates in one step. Clipping g to ratio x sqrt(v) first bounds every
update at about ratio x lr while the data stay as they are, so the SAE still learns to reconstruct
those tokens at their real size (scaling the tokens down, `max_norm_ratio`, bounds the steps too but
teaches the SAE the tokens at the wrong size). Elements with no history yet (v = 0: the first step,
a latent that has never fired) are left as they are.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def clip_to_second_moments(optimizer: torch.optim.Optimizer, ratio: float, *, count: bool = True) -> torch.Tensor:
    """Clip the gradient of every parameter with Adam state, in place, to ratio x the root of its
    bias-corrected second moment (before this step's update); return how many elements were clipped
    (a 0-d int64 tensor on the parameters' device: read it only when needed, it syncs a GPU), or zero
    when `count` is False (the count costs two more passes over every parameter)."""
    if ratio <= 0:
        raise ValueError(f"update_clip must be positive, got {ratio}")
    clipped = torch.zeros((), dtype=torch.int64)
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = optimizer.state.get(p)
            if p.grad is None or not state or "exp_avg_sq" not in state:
                continue
            step = state["step"].to(p.device, torch.float32)  # a tensor (fused and foreach Adam)
            scale = ratio / (1 - beta2**step).sqrt()  # 0-d: ratio / sqrt(bias correction)
            bound = state["exp_avg_sq"].sqrt().mul_(scale)  # (p.shape)
            bound.masked_fill_(bound == 0, math.inf)  # no history yet: left alone
            if count:
                clipped = clipped.to(p.device) + torch.count_nonzero(p.grad.abs() > bound)
            torch.minimum(p.grad, bound, out=p.grad)
            torch.maximum(p.grad, bound.neg_(), out=p.grad)
    return clipped


__all__ = ["clip_to_second_moments"]
