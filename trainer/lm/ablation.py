"""What one SAE feature does to a text's next-token predictions: zero it and compare.

`ablation` runs the text twice, clean and with the feature clamped to 0 through the SAE's error term
(trainer.lm.interventions.ablate: x -> x - f[feature] * W_dec[feature], so nothing the feature does
not carry moves), and compares the next-token log-probabilities at every position: the change for
the token that actually comes next, and the vocabulary tokens whose log-probability falls most
(the feature promotes them there) and rises most (it suppresses them), per position and averaged
over the text. It is the measured counterpart of the logit lens (W_dec[feature] @ W_U), which
reads the same question off the weights and ignores every later layer and the final norm.

The two passes run separately at batch size 1 with the same shapes, so where the feature does not
fire the ablated pass is the clean pass bit for bit and every change is exactly zero. The output
head runs on LOGIT_ROWS positions at a time: never a (T, vocabulary) tensor per pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainer.lm.interventions import ablate, check_interventions, intervene
from trainer.lm.sites import splice
from trainer.saes.base import SAE

LOGIT_ROWS = 64
"""Positions whose log-probabilities are formed at once: 3 x (64, V) floats, 200 MB at Gemma's V = 262,144."""


@dataclass
class TokenShift:
    """A vocabulary token and the change of its log-probability when the feature is zeroed."""

    token_id: int
    delta: float
    """log p_ablated - log p_clean (nats): negative when the feature promotes the token, positive when it
    suppresses it."""


@dataclass
class AblationResult:
    """Per position t of the text: the effect of zeroing the feature on the prediction of token t + 1."""

    token_ids: list[int]
    activations: list[float]
    """The feature's activation at each position, in the clean pass (what is zeroed)."""
    ablated_from: int
    """The first position where the feature was zeroed (1 when the text starts with a BOS that is kept clean)."""
    next_delta: list[float | None]
    """Change of log p(actual token t + 1) at position t; None at the last position (no next token)."""
    next_logprob: list[float | None]
    """log p(actual token t + 1) in the clean pass; None at the last position."""
    promoted: list[list[TokenShift]]
    """At each position, up to k tokens whose log-probability falls most when the feature is zeroed (most
    negative delta first; only tokens that fall)."""
    suppressed: list[list[TokenShift]]
    """At each position, up to k tokens whose log-probability rises most (most positive first; only risers)."""
    text_promoted: list[TokenShift]
    """Over the text: the k tokens with the most negative mean delta over all positions."""
    text_suppressed: list[TokenShift]
    """Over the text: the k tokens with the most positive mean delta."""


def output_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None, float | None]:
    """(decoder, output head, final logit soft-cap) of a transformers causal LM; (None, None, cap) when the
    head is not a separable Linear (then only the full forward gives logits)."""
    lm: Any = model
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = getattr(lm, "model", None)
    get_text = getattr(lm.config, "get_text_config", None)
    text = get_text() if callable(get_text) else lm.config
    cap = getattr(text, "final_logit_softcapping", None)
    if not isinstance(head, nn.Linear) or not isinstance(decoder, nn.Module):
        return None, None, cap
    return decoder, head, cap


def _log_probs(head: nn.Module | None, cap: float | None, rows: Tensor) -> Tensor:
    """(r, d_model) final hidden states -> (r, V) log-probabilities (rows are logits already when head is None)."""
    logits = (head(rows) if head is not None else rows).float()  # (r, V)
    if cap and head is not None:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


def _shifts(values: Tensor, ids: Tensor, keep: Tensor) -> list[TokenShift]:
    """(k,) values and token ids -> TokenShifts where keep (k,) holds."""
    triples = zip(ids.tolist(), values.tolist(), keep.tolist(), strict=True)
    return [TokenShift(int(i), float(v)) for i, v, ok in triples if ok]


@torch.no_grad()
def ablation(
    model: nn.Module,
    sae: SAE,
    token_ids: Sequence[int],
    feature: int,
    *,
    layer: int,
    site: str,
    start: int = 0,
    k: int = 10,
) -> AblationResult:
    """Zero `feature` at positions >= start of `token_ids` (BOS included if the SAE's text has one) and compare
    the next-token log-probabilities with the clean pass (module docstring). k: tokens listed per position."""
    if not token_ids:
        raise ValueError("the text has no tokens")
    check_interventions([ablate(feature)], int(sae.cfg.d_sae))
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)  # (1, T)
    T = ids.shape[1]
    decoder, head, cap = output_head(model)
    runner = decoder if decoder is not None else model
    seen: list[Tensor] = []

    def record(x: Tensor) -> Tensor:
        seen.append(x.detach().clone())  # (1, T, d_in)
        return x

    def final(out: Any) -> Tensor:  # (T, d_model) hidden states, or (T, V) logits without a separable head
        return (out.last_hidden_state if head is not None else out.logits)[0]

    with splice(model, layer, site, record):
        clean = final(runner(input_ids=ids, use_cache=False))
    with intervene(model, sae, [ablate(feature)], layer=layer, site=site, start=start):
        ablated = final(runner(input_ids=ids, use_cache=False))
    acts = sae.encode(seen[0][0].to(sae.W_dec.dtype))[:, feature]  # (T,)

    V = int(head.out_features) if isinstance(head, nn.Linear) else clean.shape[-1]
    k = max(1, min(k, V))
    nxt = ids[0, 1:]  # (T-1,) the actual next tokens
    total = torch.zeros(V, dtype=torch.float32, device=device)  # (V,) sum of deltas over positions
    next_delta: list[float | None] = []
    next_logprob: list[float | None] = []
    promoted: list[list[TokenShift]] = []
    suppressed: list[list[TokenShift]] = []
    for lo in range(0, T, LOGIT_ROWS):
        hi = min(lo + LOGIT_ROWS, T)
        lp_clean = _log_probs(head, cap, clean[lo:hi])  # (r, V)
        delta = _log_probs(head, cap, ablated[lo:hi]) - lp_clean  # (r, V)
        total += delta.sum(dim=0)
        targets = nxt[lo : min(hi, T - 1)]  # (r',) r' = r, or r - 1 in the chunk holding the last position
        rows = torch.arange(len(targets), device=device)
        next_delta += delta[rows, targets].tolist()
        next_logprob += lp_clean[rows, targets].tolist()
        down_vals, down_ids = torch.topk(delta, k, dim=1, largest=False)  # (r, k) most negative first
        up_vals, up_ids = torch.topk(delta, k, dim=1)  # (r, k) most positive first
        for r in range(hi - lo):
            promoted.append(_shifts(down_vals[r], down_ids[r], down_vals[r] < 0))
            suppressed.append(_shifts(up_vals[r], up_ids[r], up_vals[r] > 0))
    mean = total / T  # (V,)
    down_vals, down_ids = torch.topk(mean, k, largest=False)  # (k,)
    up_vals, up_ids = torch.topk(mean, k)  # (k,)
    return AblationResult(
        token_ids=list(token_ids),
        activations=(acts + 0.0).tolist(),  # + 0.0: no -0.0 from JumpReLU's pre * H(pre - theta)
        ablated_from=start,
        next_delta=[*next_delta, None],
        next_logprob=[*next_logprob, None],
        promoted=promoted,
        suppressed=suppressed,
        text_promoted=_shifts(down_vals, down_ids, down_vals < 0),
        text_suppressed=_shifts(up_vals, up_ids, up_vals > 0),
    )
