"""Interventions, steered generation and ablation (trainer.lm.interventions, .generation, .ablation).

On the tiny random Gemma 2 with the app tests' tiny random JumpReLU SAE (layer 1, resid), and in slow
tests on the packaged Gemma 3 270M with a random JumpReLU of d_in 640 at layer 9: an empty
intervention list is the model itself, a clamp to the current value changes nothing, a large strength
along a feature with a clear logit-lens token raises that token, and ablating a silent feature changes
nothing (exactly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from tests.app.conftest import random_jumprelu
from trainer.formats.tensors import sae_from_tensors
from trainer.lm.ablation import ablation
from trainer.lm.generation import GenerationConfig, generate_steered
from trainer.lm.interventions import (
    Add,
    Clamp,
    InterventionError,
    ablate,
    apply_interventions,
    check_interventions,
    intervene,
)
from trainer.lm.models import LoadedModel, load_model
from trainer.lm.sites import harvest, splice
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig

LAYER, SITE = 1, "resid"
PROMPT = "The quick brown fox jumps over the lazy dog. Sparse is better than"
SILENT = 5
"""The feature of `with_silent` that never fires."""


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir))


def with_silent(sae: SAE, silent: int = SILENT) -> SAE:
    """The SAE with feature `silent` given a threshold no activation reaches (it never fires)."""
    tensors = {k: v.clone() for k, v in sae.inference_tensors().items()}
    tensors["threshold"][silent] = 1e30
    cfg = SAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, threshold_param="raw")
    return sae_from_tensors(tensors, cfg, "test").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sae() -> SAE:
    return with_silent(random_jumprelu(64))


def prompt_ids(lm: LoadedModel, text: str = PROMPT) -> list[int]:
    return [lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False).input_ids]


def greedy(lm: LoadedModel, n: int = 24, **overrides: Any) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": n, "stop_ids": frozenset({lm.tokenizer.eos_token_id}), **overrides})


def logits(lm: LoadedModel, ids: list[int]) -> Tensor:
    """(T, V) logits of one sequence."""
    return lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def lens_feature(lm: LoadedModel, sae: SAE) -> tuple[int, int]:
    """(feature, token): the feature whose logit lens (W_dec[f] @ W_U) has the widest top-1 margin, and that token."""
    W_U = lm.model.get_output_embeddings().weight  # (V, d_model)
    top = (sae.W_dec.float() @ W_U.float().T).topk(2, dim=1)  # (d_sae, 2)
    feature = int((top.values[:, 0] - top.values[:, 1]).argmax())
    return feature, int(top.indices[feature, 0])


def no_hooks(lm: LoadedModel) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


# --- the intervention itself ------------------------------------------------------------------------------------------


def test_add_and_clamp_are_the_documented_formulas(tiny: LoadedModel, sae: SAE) -> None:
    x = harvest(tiny.model, torch.tensor([prompt_ids(tiny)]), None, LAYER, SITE)[0]  # (T, 64)
    f = sae.encode(x)  # (T, d_sae)
    feature = int((f > 0).sum(0).argmax())
    assert_close(apply_interventions(x, sae, [Add(feature, 2.5)]), x + 2.5 * sae.W_dec[feature])
    clamped = f.clone()
    clamped[:, feature] = 3.0
    expected = sae.decode(clamped) + (x - sae.decode(f))  # x_hat' + (x - x_hat)
    assert_close(apply_interventions(x, sae, [Clamp(feature, 3.0)]), expected, rtol=1e-5, atol=1e-5)
    # ablate = clamp to 0; the last clamp of a feature wins; adds come after clamps
    assert torch.equal(apply_interventions(x, sae, [ablate(feature)]), apply_interventions(x, sae, [Clamp(feature, 0)]))
    assert torch.equal(
        apply_interventions(x, sae, [Clamp(feature, 9.0), Clamp(feature, 3.0)]),
        apply_interventions(x, sae, [Clamp(feature, 3.0)]),
    )
    both = apply_interventions(x, sae, [Add(1, 2.0), Clamp(feature, 3.0)])
    assert_close(both, apply_interventions(x, sae, [Clamp(feature, 3.0)]) + 2.0 * sae.W_dec[1])
    # clamping to the current value at every position is the identity, bit for bit
    assert torch.equal(apply_interventions(x, sae, [Clamp(SILENT, 0.0)]), x)


def test_bad_interventions_are_refused_with_a_reason(sae: SAE) -> None:
    for bad, match in [
        ([Add(40, 1.0)], "feature 40 is out of range: this SAE has 40 features"),
        ([Clamp(-1, 0.0)], "feature -1 is out of range"),
        ([Add(0, float("nan"))], "not a finite number"),
        ([Clamp(0, float("inf"))], "not a finite number"),
    ]:
        with pytest.raises(InterventionError, match=match):
            check_interventions(bad, int(sae.cfg.d_sae))


def test_clamp_to_the_current_value_changes_nothing(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    x = harvest(tiny.model, torch.tensor([ids]), None, LAYER, SITE)[0]
    f = sae.encode(x)  # (T, d_sae)
    last = len(ids) - 1
    feature = int(f[last].argmax())
    value = float(f[last, feature])
    assert value > 0
    clean = logits(tiny, ids)
    with intervene(tiny.model, sae, [Clamp(feature, value)], layer=LAYER, site=SITE, start=last):
        same = logits(tiny, ids)
    assert_close(same, clean, rtol=1e-4, atol=1e-4)  # the hook encodes one row, the value came from T rows
    with intervene(tiny.model, sae, [Clamp(feature, value + 50.0)], layer=LAYER, site=SITE, start=last):
        moved = logits(tiny, ids)
    assert not torch.allclose(moved[last], clean[last], atol=1e-3)  # the same hook with another value acts
    assert_close(moved[:last], clean[:last])  # and only from `start` on


# --- generation ------------------------------------------------------------------------------------------------------


def test_no_interventions_is_the_model_itself_token_for_token(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    config = greedy(tiny, 24)
    with intervene(tiny.model, sae, [], layer=LAYER, site=SITE) as hook:
        assert hook is None and no_hooks(tiny)  # nothing is installed at all
    result = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=config)
    assert result.steered == result.baseline and result.seed is None
    plain = tiny.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    n = len(result.baseline.token_ids)
    assert result.baseline.token_ids == plain[:n] and (n == 24 or plain[n - 1] == tiny.tokenizer.eos_token_id)
    # the log-probabilities are the model's own, token by token
    full = torch.log_softmax(logits(tiny, ids + result.baseline.token_ids).float(), dim=-1)
    expected = [float(full[len(ids) - 1 + i, t]) for i, t in enumerate(result.baseline.token_ids)]
    assert_close(torch.tensor(result.baseline.logprobs), torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert no_hooks(tiny)


def test_the_baseline_row_is_not_steered_and_the_steered_row_is(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    feature, token = lens_feature(tiny, sae)
    plain = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=greedy(tiny))
    steered = generate_steered(tiny.model, sae, ids, [Add(feature, 100.0)], layer=LAYER, site=SITE, config=greedy(tiny))
    assert steered.baseline.token_ids == plain.baseline.token_ids
    assert_close(torch.tensor(steered.baseline.logprobs), torch.tensor(plain.baseline.logprobs), rtol=1e-4, atol=1e-4)
    assert steered.steered.token_ids != steered.baseline.token_ids
    assert token in steered.steered.token_ids
    assert no_hooks(tiny)


def test_a_large_strength_raises_the_logit_lens_token(tiny: LoadedModel, sae: SAE) -> None:
    feature, token = lens_feature(tiny, sae)
    ids = prompt_ids(tiny)
    last = len(ids) - 1
    clean = torch.softmax(logits(tiny, ids)[last].float(), dim=-1)
    with intervene(tiny.model, sae, [Add(feature, 100.0)], layer=LAYER, site=SITE, start=last):
        steered = torch.softmax(logits(tiny, ids)[last].float(), dim=-1)
    assert steered[token] > 10 * clean[token]
    result = generate_steered(tiny.model, sae, ids, [Add(feature, 100.0)], layer=LAYER, site=SITE,
                              config=greedy(tiny, 1), start=last)  # fmt: skip
    assert result.steered.token_ids == [token] and result.baseline.token_ids != [token]


def test_every_new_position_is_steered_as_without_a_kv_cache(tiny: LoadedModel, sae: SAE) -> None:
    """The cached generation equals a naive one that reruns the whole sequence, hooked afresh, for each token."""
    ids = prompt_ids(tiny)
    feature, _ = lens_feature(tiny, sae)
    steer = [Add(feature, 8.0), Clamp(3, 1.5)]
    start = len(ids) - 1
    result = generate_steered(tiny.model, sae, ids, steer, layer=LAYER, site=SITE, config=greedy(tiny, 12), start=start)
    seq = list(ids)
    for _ in range(len(result.steered.token_ids)):
        with intervene(tiny.model, sae, steer, layer=LAYER, site=SITE, start=start):
            seq.append(int(logits(tiny, seq)[-1].argmax()))
    assert seq[len(ids) :] == result.steered.token_ids


def test_sampling_is_reproducible_per_row(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    config = greedy(tiny, 16, temperature=1.0, seed=7)
    alone = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=config)
    again = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=config)
    assert alone == again and alone.seed == 7
    # next to a steered row, the baseline row samples the same tokens; a steering that changes nothing too
    idle = generate_steered(tiny.model, sae, ids, [Add(0, 0.0)], layer=LAYER, site=SITE, config=config)
    assert idle.baseline.token_ids == alone.baseline.token_ids == idle.steered.token_ids
    other = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=greedy(tiny, 16, temperature=1.0,
                                                                                                  seed=8))  # fmt: skip
    assert other.baseline.token_ids != alone.baseline.token_ids
    drawn = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE, config=greedy(tiny, 4, temperature=1.0))
    assert drawn.seed is not None  # a seed was drawn and is reported, so the run can be repeated
    repeat = generate_steered(tiny.model, sae, ids, [], layer=LAYER, site=SITE,
                              config=greedy(tiny, 4, temperature=1.0, seed=drawn.seed))  # fmt: skip
    assert repeat.baseline == drawn.baseline


def test_generation_config_is_checked() -> None:
    for bad, match in [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                       ({"temperature": float("nan")}, "temperature"), ({"seed": -1}, "seed")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            GenerationConfig(**bad)


# --- ablation --------------------------------------------------------------------------------------------------------


def test_ablating_a_silent_feature_changes_nothing_exactly(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    result = ablation(tiny.model, sae, ids, SILENT, layer=LAYER, site=SITE, start=1)
    assert result.activations == [0.0] * len(ids)
    assert result.next_delta[:-1] == [0.0] * (len(ids) - 1) and result.next_delta[-1] is None
    assert all(not p and not s for p, s in zip(result.promoted, result.suppressed, strict=True))
    assert result.text_promoted == [] and result.text_suppressed == []
    assert no_hooks(tiny)


def test_ablation_matches_the_explicit_computation(tiny: LoadedModel, sae: SAE) -> None:
    ids = prompt_ids(tiny)
    x = harvest(tiny.model, torch.tensor([ids]), None, LAYER, SITE)[0]
    f = sae.encode(x)  # (T, d_sae)
    feature = int((f[1:] > 0).sum(0).argmax())
    first = 1 + int((f[1:, feature] > 0).nonzero()[0])
    result = ablation(tiny.model, sae, ids, feature, layer=LAYER, site=SITE, start=1, k=5)
    assert_close(torch.tensor(result.activations), f[:, feature] + 0.0)

    def zeroed(a: Tensor) -> Tensor:  # x - f[feature] * W_dec[feature] after BOS
        out = a.clone()
        out[0, 1:] -= f[1:, feature, None] * sae.W_dec[feature]
        return out

    clean = torch.log_softmax(logits(tiny, ids).float(), dim=-1)  # (T, V)
    with splice(tiny.model, LAYER, SITE, zeroed):
        abl = torch.log_softmax(logits(tiny, ids).float(), dim=-1)
    delta = abl - clean  # (T, V)
    expected = delta[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert_close(torch.tensor(result.next_delta[:-1]), expected, rtol=1e-4, atol=1e-5)
    assert result.next_delta[:first] == [0.0] * first  # nothing changes before the feature first fires
    assert any(d != 0 for d in result.next_delta[first:-1])
    for t in range(first, len(ids)):
        assert [s.token_id for s in result.promoted[t]] == delta[t].topk(5, largest=False).indices.tolist()[
            : len(result.promoted[t])
        ]
        assert all(s.delta < 0 for s in result.promoted[t]) and all(s.delta > 0 for s in result.suppressed[t])
    mean = delta.mean(dim=0)
    assert [s.token_id for s in result.text_suppressed] == mean.topk(5).indices.tolist()
    assert_close(torch.tensor([s.delta for s in result.text_suppressed]), mean.topk(5).values, rtol=1e-4, atol=1e-6)


# --- the packaged Gemma 3 270M ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3() -> LoadedModel:
    return load_model("gemma3-270m")


def with_token_directions(sae: SAE, lm: LoadedModel, words: list[str]) -> SAE:
    """The SAE with its last len(words) decoder rows set to the unit unembedding rows of those words' first tokens:
    features with a clear output token (random directions in Gemma 3's 640 dimensions have none)."""
    tensors = {k: v.clone() for k, v in sae.inference_tensors().items()}
    W_U = lm.model.get_output_embeddings().weight.detach()  # (V, d_model)
    for i, word in enumerate(words):
        token = lm.tokenizer(word, add_special_tokens=False).input_ids[0]
        tensors["W_dec"][sae.cfg.d_sae - len(words) + i] = torch.nn.functional.normalize(W_U[token], dim=0)
    cfg = SAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, threshold_param="raw")
    return sae_from_tensors(tensors, cfg, "test").eval().requires_grad_(False)


@pytest.mark.slow
def test_gemma3_270m_steering_and_ablation(gemma3: LoadedModel) -> None:
    """The four properties on the real model, layer 9 of 18, with a random JumpReLU of d_in 640."""
    layer, site = 9, "resid"
    sae = with_token_directions(with_silent(random_jumprelu(640, d_sae=256, seed=3)), gemma3, [" dog", " blue"])
    ids = prompt_ids(gemma3, "The capital of France is Paris, and the capital of Italy is")
    stop = frozenset({gemma3.tokenizer.eos_token_id})
    config = GenerationConfig(max_new_tokens=12, stop_ids=stop)
    # 1. no interventions: the model's own greedy generation
    result = generate_steered(gemma3.model, sae, ids, [], layer=layer, site=site, config=config)
    plain = gemma3.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
    assert result.steered == result.baseline
    assert result.baseline.token_ids == plain[: len(result.baseline.token_ids)]
    assert "Rome" in gemma3.tokenizer.decode(result.baseline.token_ids)
    # 2. a clamp to the current value changes nothing
    x = harvest(gemma3.model, torch.tensor([ids]), None, layer, site)[0]
    f = sae.encode(x)
    last = len(ids) - 1
    feature = int(f[last].argmax())
    assert f[last, feature] > 0
    clean = logits(gemma3, ids)
    with intervene(gemma3.model, sae, [Clamp(feature, float(f[last, feature]))], layer=layer, site=site, start=last):
        assert_close(logits(gemma3, ids), clean, rtol=1e-4, atol=1e-4)  # the hook re-encodes one row: float noise
    # 3. a large strength along the feature with the clearest logit-lens token raises that token
    feature, token = lens_feature(gemma3, sae)
    assert feature >= sae.cfg.d_sae - 2  # one of the token directions
    before = torch.softmax(clean[last].float(), dim=-1)[token]
    strength = float(x[1:].norm(dim=-1).max())  # the largest residual norm after BOS
    with intervene(gemma3.model, sae, [Add(feature, strength)], layer=layer, site=site, start=last):
        after = torch.softmax(logits(gemma3, ids)[last].float(), dim=-1)[token]
    assert after > 0.5 > 1000 * before
    steered = generate_steered(gemma3.model, sae, ids, [Add(feature, strength)], layer=layer, site=site,
                               config=GenerationConfig(max_new_tokens=3, stop_ids=stop), start=last)  # fmt: skip
    assert steered.steered.token_ids[0] == token and steered.baseline.token_ids == result.baseline.token_ids[:3]
    # 4. ablating a feature that never fires changes nothing
    silent = ablation(gemma3.model, sae, ids, SILENT, layer=layer, site=site, start=1)
    assert silent.next_delta[:-1] == [0.0] * (len(ids) - 1) and silent.text_promoted == []
    # and one that fires does
    busy = int((f[1:] > 0).sum(0).argmax())
    moved = ablation(gemma3.model, sae, ids, busy, layer=layer, site=site, start=1)
    assert any(d != 0 for d in moved.next_delta[:-1]) and moved.text_promoted
