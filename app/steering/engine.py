"""Steering and ablation on a loaded (model, SAE) pair: the work a LocalEncoder runs in its model thread.

`steer` and `ablate` take the pair the encoder's cache holds (LocalEncoder.run_loaded), tokenise as
encoding does (as in training: no special tokens added, special-token strings split into ordinary
tokens, BOS prepended once when the SAE was trained with it), check what needs the SAE and the
tokenizer (EncodeError, a 422), call trainer.lm.generation / trainer.lm.ablation and build the
REST reply. BOS is never intervened on: like the delta-LM-loss splice, interventions start after it.
"""

from __future__ import annotations

import secrets
from typing import Any

from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget
from app.steering.schemas import (
    MAX_ABLATE_TOKENS,
    MAX_PROMPT_TOKENS,
    MAX_SEED,
    AblateIn,
    AblateOut,
    ContinuationOut,
    PositionOut,
    SteerIn,
    SteerOut,
    TokenShiftOut,
)
from trainer.lm.ablation import TokenShift, ablation
from trainer.lm.generation import Continuation, GenerationConfig, generate_steered
from trainer.lm.interventions import Add, Clamp, Intervention, InterventionError, check_interventions
from trainer.lm.layers import text_config
from trainer.lm.models import LoadedModel
from trainer.saes.base import SAE


def tokenize(lm: LoadedModel, target: SAETarget, text: str, *, max_tokens: int, what: str) -> list[int]:
    """Token ids of text as encoding makes them (module docstring); EncodeError if none or over max_tokens."""
    tokenizer = lm.tokenizer
    bos = tokenizer.bos_token_id
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    ids = [int(t) for t in encoded]
    if bos is not None and ids and ids[0] == bos:  # some tokenizers add it anyway: never twice
        ids = ids[1:]
    if target.prepend_bos:
        if bos is None:
            raise EncoderUnavailable(f"SAE {target.name!r} was trained with BOS but its model's tokenizer has none")
        ids = [int(bos), *ids]
    if len(ids) <= (1 if target.prepend_bos else 0):
        raise EncodeError(f"the {what} has no tokens")
    if len(ids) > max_tokens:
        bos_note = " (BOS included)" if target.prepend_bos else ""
        raise EncodeError(f"the {what} has {len(ids)} tokens{bos_note}, over the limit of {max_tokens} tokens")
    return ids


def interventions_of(body: SteerIn) -> list[Intervention]:
    """The request's interventions as trainer.lm.interventions objects, in order."""
    return [
        Add(item.feature, item.strength) if item.strength is not None else Clamp(item.feature, float(item.clamp or 0))
        for item in body.interventions
    ]


def _stop_ids(lm: LoadedModel) -> frozenset[int]:
    """The ids that end a continuation: the tokenizer's EOS and the model's generation EOS ids."""
    ids: set[int] = set()
    config = getattr(lm.model, "generation_config", None)
    for value in (lm.tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _decode(lm: LoadedModel, ids: list[int]) -> list[str]:
    return list(lm.tokenizer.batch_decode([[i] for i in ids]))


def _continuation(lm: LoadedModel, c: Continuation) -> ContinuationOut:
    return ContinuationOut(
        text=lm.tokenizer.decode(c.token_ids, skip_special_tokens=True),
        tokens=_decode(lm, c.token_ids),
        token_ids=c.token_ids,
        logprobs=c.logprobs,
        finish_reason=c.finish_reason,
    )


def steer(lm: LoadedModel, sae: SAE, target: SAETarget, body: SteerIn, *, max_tokens: int) -> SteerOut:
    """The steered and baseline continuations of body.prompt (one batch); EncodeError on bad input.

    max_tokens: the server's token limit per text (JUMPSCOPE_ENCODE_MAX_TOKENS); the prompt may hold at most
    min(max_tokens, MAX_PROMPT_TOKENS), and prompt plus continuation must fit the model's context."""
    interventions = interventions_of(body)
    try:
        check_interventions(interventions, int(sae.cfg.d_sae))
    except InterventionError as err:
        raise EncodeError(str(err)) from err
    ids = tokenize(lm, target, body.prompt, max_tokens=min(max_tokens, MAX_PROMPT_TOKENS), what="prompt")
    context: Any = getattr(text_config(lm.model.config), "max_position_embeddings", None)
    if isinstance(context, int) and len(ids) + body.max_new_tokens > context:
        raise EncodeError(
            f"the prompt's {len(ids)} tokens plus max_new_tokens={body.max_new_tokens} exceed the model's context of "
            f"{context} tokens: shorten the prompt or ask for fewer tokens"
        )
    sampled = body.temperature > 0
    seed = (body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)) if sampled else None
    config = GenerationConfig(body.max_new_tokens, body.temperature, seed, _stop_ids(lm))
    first = 1 if target.prepend_bos else 0
    start = first if body.positions == "all" else max(first, len(ids) - 1)
    result = generate_steered(
        lm.model, sae, ids, interventions, layer=target.layer, site=target.site, config=config, start=start
    )
    return SteerOut(
        sae=target.name,
        prompt_tokens=_decode(lm, ids),
        steered=_continuation(lm, result.steered),
        baseline=_continuation(lm, result.baseline),
        seed=result.seed,
        steered_from=start,
    )


def _shift_outs(lm: LoadedModel, shifts: list[TokenShift]) -> list[TokenShiftOut]:
    names = _decode(lm, [s.token_id for s in shifts])
    return [TokenShiftOut(token_id=s.token_id, token=n, delta=s.delta) for s, n in zip(shifts, names, strict=True)]


def ablate(lm: LoadedModel, sae: SAE, target: SAETarget, feature: int, body: AblateIn, *, max_tokens: int) -> AblateOut:
    """The change in the text's next-token log-probabilities when `feature` is zeroed; EncodeError on bad input."""
    d_sae = int(sae.cfg.d_sae)
    if not 0 <= feature < d_sae:
        raise EncodeError(f"feature {feature} is out of range: this SAE has {d_sae} features (0 to {d_sae - 1})")
    ids = tokenize(lm, target, body.text, max_tokens=min(max_tokens, MAX_ABLATE_TOKENS), what="text")
    start = 1 if target.prepend_bos else 0
    result = ablation(lm.model, sae, ids, feature, layer=target.layer, site=target.site, start=start, k=body.top_tokens)
    tokens = _decode(lm, ids)
    positions = [
        PositionOut(
            token=tokens[t],
            token_id=ids[t],
            activation=result.activations[t],
            next_delta=result.next_delta[t],
            next_logprob=result.next_logprob[t],
            promoted=_shift_outs(lm, result.promoted[t]),
            suppressed=_shift_outs(lm, result.suppressed[t]),
        )
        for t in range(len(ids))
    ]
    return AblateOut(
        sae=target.name,
        feature=feature,
        ablated_from=start,
        positions=positions,
        promoted=_shift_outs(lm, result.text_promoted),
        suppressed=_shift_outs(lm, result.text_suppressed),
    )
