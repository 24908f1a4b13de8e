"""Sites, hooks, early stopping, splicing and delta LM loss on the tiny random Gemma 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from trainer.evaluation.delta_lm import delta_lm_loss, delta_lm_losses
from trainer.lm.models import load_model
from trainer.lm.sites import SiteError, harvest, site_width, splice


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir))


def batch(tokenizer, texts: list[str]) -> tuple[Tensor, Tensor]:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


# Longer than the sliding window (32) so that local attention is really exercised.
TEXTS = ["Sparse is better than dense. " * 8, "Errors should never pass silently, unless explicitly silenced. " * 4]


def test_resid_of_layer_l_is_hidden_states_l_plus_one_for_all_but_the_last_layer(tiny) -> None:
    ids, mask = batch(tiny.tokenizer, TEXTS)
    assert ids.shape[1] > 32
    hidden = tiny.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    n_layers = tiny.model.config.num_hidden_layers
    for layer in range(n_layers - 1):
        torch.testing.assert_close(harvest(tiny.model, ids, mask, layer, "resid"), hidden[layer + 1])
    # The last hidden state is after the final norm, so the last layer's resid differs from it.
    last = harvest(tiny.model, ids, mask, n_layers - 1, "resid")
    assert not torch.allclose(last, hidden[n_layers])


def test_attention_site_is_heads_times_head_dim_wide(tiny) -> None:
    cfg = tiny.model.config
    assert site_width(tiny.model, "attn") == cfg.num_attention_heads * cfg.head_dim == 128
    assert site_width(tiny.model, "resid") == site_width(tiny.model, "mlp") == cfg.hidden_size == 64
    ids, mask = batch(tiny.tokenizer, TEXTS)
    assert harvest(tiny.model, ids, mask, 1, "attn").shape == (*ids.shape, 128)


def test_mlp_site_is_the_post_feedforward_norm_output(tiny) -> None:
    ids, mask = batch(tiny.tokenizer, TEXTS)
    seen: list[Tensor] = []
    norm = tiny.model.model.layers[1].post_feedforward_layernorm
    handle = norm.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        got = harvest(tiny.model, ids, mask, 1, "mlp")
    finally:
        handle.remove()
    torch.testing.assert_close(got, seen[0])


def test_harvest_stops_the_forward_pass_after_the_hooked_layer(tiny) -> None:
    ids, mask = batch(tiny.tokenizer, TEXTS)
    later_calls: list[int] = []
    handles = [
        tiny.model.model.layers[2].register_forward_hook(lambda *a: later_calls.append(2)),
        tiny.model.lm_head.register_forward_hook(lambda *a: later_calls.append(-1)),
    ]
    try:
        harvest(tiny.model, ids, mask, 1, "resid")
    finally:
        for h in handles:
            h.remove()
    assert later_calls == []


@pytest.mark.parametrize(
    ("layer", "site", "message"),
    [
        (3, "resid", "layer 3 is out of range: the model has 3 layers (0-2)"),
        (-1, "mlp", "out of range"),
        (0, "embed", "unknown site 'embed': choose one of resid, mlp, attn"),
    ],
)
def test_bad_layer_or_site_names_the_allowed_values(tiny, layer: int, site: str, message: str) -> None:
    ids, mask = batch(tiny.tokenizer, TEXTS)
    with pytest.raises(SiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        harvest(tiny.model, ids, mask, layer, site)


@pytest.mark.parametrize("site", ["resid", "mlp", "attn"])
def test_splicing_the_identity_changes_nothing_and_zeros_change_the_logits(tiny, site: str) -> None:
    ids, mask = batch(tiny.tokenizer, TEXTS)
    clean = tiny.model(input_ids=ids, attention_mask=mask).logits
    with splice(tiny.model, 1, site, lambda a: a.clone()):
        same = tiny.model(input_ids=ids, attention_mask=mask).logits
    with splice(tiny.model, 1, site, torch.zeros_like):
        zeroed = tiny.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(same, clean)
    assert (zeroed - clean).abs().max() > 1e-3
    # The hook is gone afterwards.
    torch.testing.assert_close(tiny.model(input_ids=ids, attention_mask=mask).logits, clean)


class _TupleLayer(nn.Module):
    """A decoder layer in the transformers 4.x style: returns (hidden, extra)."""

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return hidden * 2, torch.zeros(1)


class _TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_TupleLayer(), _TupleLayer()])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, use_cache: bool = False) -> Tensor:
        hidden = input_ids.float().unsqueeze(-1).repeat(1, 1, 3)
        for layer in self.model.layers:
            hidden = layer(hidden)[0]
        return hidden


def test_hooks_take_element_zero_of_tuple_outputs_not_batch_item_zero() -> None:
    model = _TupleModel()
    ids = torch.tensor([[1, 2], [3, 4]])
    got = harvest(model, ids, None, 0, "resid")
    assert got.shape == (2, 2, 3)  # not (2, 3): batch item 0 would be the silent bug
    torch.testing.assert_close(got, ids.float().unsqueeze(-1).repeat(1, 1, 3) * 2)
    with splice(model, 0, "resid", torch.zeros_like):
        assert model(ids).abs().sum() == 0


def packed(tokenizer, texts: list[str]):
    ids, mask = batch(tokenizer, texts)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) | ~mask.bool()
    return [(ids, mask, special)]


@pytest.mark.parametrize("site", ["resid", "mlp", "attn"])
def test_delta_lm_loss_is_zero_for_an_identity_sae(tiny, site: str) -> None:
    result = delta_lm_loss(tiny.model, lambda a: a, layer=1, site=site, batches=packed(tiny.tokenizer, TEXTS))
    assert result.delta_lm_loss == 0.0
    assert result.tokens > 50
    assert result.clean_loss > 0


def test_delta_lm_loss_of_a_zero_reconstruction_is_large_and_positive(tiny) -> None:
    result = delta_lm_loss(tiny.model, torch.zeros_like, layer=0, site="resid", batches=packed(tiny.tokenizer, TEXTS))
    assert result.delta_lm_loss > 1.0  # the trained tiny model loses all context
    assert result.spliced_loss > result.clean_loss


def test_several_saes_in_one_pass_match_each_evaluated_alone(tiny) -> None:
    data = packed(tiny.tokenizer, TEXTS)
    fns = {"identity": lambda a: a, "zero": torch.zeros_like, "half": lambda a: 0.5 * a}
    together = delta_lm_losses(tiny.model, fns, layer=1, site="resid", batches=data)
    for name, fn in fns.items():
        alone = delta_lm_loss(tiny.model, fn, layer=1, site="resid", batches=data)
        assert together[name].clean_loss == alone.clean_loss and together[name].tokens == alone.tokens
        assert together[name].spliced_loss == pytest.approx(alone.spliced_loss, rel=1e-6)
    assert together["identity"].delta_lm_loss == 0.0 < together["half"].delta_lm_loss < together["zero"].delta_lm_loss


def test_delta_lm_loss_counts_no_prediction_from_or_of_special_tokens(tiny) -> None:
    data = packed(tiny.tokenizer, TEXTS)
    ids, mask, special = data[0]
    result = delta_lm_loss(tiny.model, lambda a: a, layer=1, site="resid", batches=data)
    expected = int((~special[:, :-1] & ~special[:, 1:] & mask[:, 1:].bool()).sum())
    assert result.tokens == expected < int(mask.sum()) - ids.shape[0]


def test_losses_from_the_head_at_kept_positions_equal_the_models_own_logits(tiny, monkeypatch) -> None:
    """delta LM loss forms logits only at the kept positions, a few rows at a time (Gemma's soft-capping
    included); the clean loss must equal cross-entropy over the model's own full logits."""
    from trainer.evaluation import delta_lm

    assert tiny.model.config.get_text_config().final_logit_softcapping  # the capped path is exercised
    ((ids, mask, special),) = packed(tiny.tokenizer, TEXTS)
    keep = ~special[:, :-1] & ~special[:, 1:] & mask[:, 1:].bool()
    with torch.no_grad():
        logits = tiny.model(input_ids=ids, attention_mask=mask).logits
        full = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), ids[:, 1:][keep], reduction="none")
    monkeypatch.setattr(delta_lm, "LOGIT_ROWS", 7)  # several chunks with a ragged last one
    with torch.no_grad():
        chunked = delta_lm._kept_losses(tiny.model, ids, mask, keep)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    result = delta_lm_loss(tiny.model, lambda a: a, layer=1, site="resid", batches=[(ids, mask, special)])
    assert result.clean_loss == pytest.approx(float(full.double().mean()), rel=1e-5)
