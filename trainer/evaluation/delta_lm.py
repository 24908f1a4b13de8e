"""Delta LM loss: next-token cross-entropy with the SAE's reconstruction spliced in, minus clean.

Gemma Scope §3.3.2 (jumprelu.md §5). The reconstruction replaces the site's activation at
every position except BOS and padding (BOS is a large-norm outlier that the SAE never saw;
its position stays clean, as recommended there). The loss is averaged over the positions t
whose input token t and target token t+1 are both ordinary tokens: predictions from or of
BOS, EOS and pad are excluded, the same masking as every other metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from trainer.lm.sites import splice


@dataclass
class LMLossResult:
    """Mean next-token cross-entropy (nats per token) clean and with the SAE spliced in."""

    clean_loss: float
    spliced_loss: float
    delta_lm_loss: float
    tokens: int
    """Predictions counted."""


LOGIT_ROWS = 256
"""Positions whose logits are formed at once: (256, V) instead of (B, T, V), which for Gemma's
262k vocabulary is 1 GB per 1,024 tokens, several times over (the float copy, the log-softmax)."""


def _kept_losses(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, keep: Tensor) -> Tensor:
    """(n,) cross-entropy of predicting token t+1 at each position t where keep (B, T-1) is True.

    The decoder runs once; the output head (and Gemma's final logit soft-capping) only at the kept
    positions, LOGIT_ROWS at a time: the same numbers as the model's own logits, without its
    (B, T, vocabulary) tensor. Models without a separable head fall back to the full forward.
    """
    lm: Any = model  # a transformers causal LM: get_output_embeddings, .model, .config
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = getattr(lm, "model", None)
    targets = input_ids[:, 1:][keep]  # (n,)
    if not isinstance(head, nn.Linear) or not isinstance(decoder, nn.Module):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
        return nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets, reduction="none")
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1][keep]  # (n, d_model)
    cap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)
    losses = []
    for rows, wanted in zip(hidden.split(LOGIT_ROWS), targets.split(LOGIT_ROWS), strict=True):
        logits = head(rows).float()  # (r, V)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        losses.append(nn.functional.cross_entropy(logits, wanted, reduction="none"))
    return torch.cat(losses) if losses else hidden.new_zeros(0)


@torch.no_grad()
def delta_lm_loss(
    model: nn.Module,
    reconstruct: Callable[[Tensor], Tensor],
    *,
    layer: int,
    site: str,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    max_tokens: int | None = None,
    progress: bool = False,
) -> LMLossResult:
    """Delta LM loss over batches of (input_ids, attention_mask, special) tensors, each (B, T).

    `reconstruct` maps activations (N, d_in) to reconstructions (N, d_in) in raw units,
    e.g. `lambda a: sae(a)` for an inference-form SAE.
    """
    return delta_lm_losses(
        model, {"sae": reconstruct}, layer=layer, site=site, batches=batches, max_tokens=max_tokens, progress=progress
    )["sae"]


@torch.no_grad()
def delta_lm_losses(
    model: nn.Module,
    reconstructs: Mapping[str, Callable[[Tensor], Tensor]],
    *,
    layer: int,
    site: str,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, LMLossResult]:
    """Delta LM loss of several SAEs of one site on the same tokens, each by name.

    One clean forward pass per batch serves them all, then one spliced pass per SAE, so n SAEs
    cost n + 1 passes instead of 2n, and their deltas are paired (the same predictions).
    """
    device = next(model.parameters()).device
    clean_sum = 0.0
    spliced_sums = dict.fromkeys(reconstructs, 0.0)
    counted = 0
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, disable=not progress, desc="delta LM loss")
    config: Any = model.config
    bos = config.get_text_config().bos_token_id
    for input_ids, attention_mask, special in batches:
        input_ids, attention_mask, special = input_ids.to(device), attention_mask.to(device), special.to(device)
        splice_at = attention_mask.bool() & (input_ids != bos)  # (B, T): everything but BOS and padding
        keep = ~special[:, :-1] & ~special[:, 1:] & attention_mask[:, 1:].bool()  # (B, T-1)
        clean = _kept_losses(model, input_ids, attention_mask, keep)
        clean_sum += float(clean.double().sum())
        for name, reconstruct in reconstructs.items():

            def replace(
                act: Tensor, splice_at: Tensor = splice_at, fn: Callable[[Tensor], Tensor] = reconstruct
            ) -> Tensor:
                out = act.clone()  # (B, T, d_in)
                out[splice_at] = fn(act[splice_at].float()).to(act.dtype)
                return out

            with splice(model, layer, site, replace):
                spliced = _kept_losses(model, input_ids, attention_mask, keep)
            spliced_sums[name] += float(spliced.double().sum())
        n = int(keep.sum())
        counted += n
        bar.update(n)
        if max_tokens is not None and counted >= max_tokens:
            break
    bar.close()
    if counted == 0:
        raise ValueError("no tokens to evaluate the LM loss on")
    clean_loss = clean_sum / counted
    return {
        name: LMLossResult(clean_loss, total / counted, total / counted - clean_loss, counted)
        for name, total in spliced_sums.items()
    }
