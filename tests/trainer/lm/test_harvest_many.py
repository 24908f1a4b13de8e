"""harvest_many: several sites of one model read in one forward pass, stopped after the deepest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from trainer.lm.models import load_model
from trainer.lm.sites import SiteError, harvest, harvest_many


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return load_model(str(tiny_model_dir))


TEXTS = ["Sparse is better than dense. " * 8, "Errors should never pass silently. " * 3]


def batch(tokenizer: Any) -> tuple[Tensor, Tensor]:
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_each_site_equals_its_own_harvest(tiny: Any) -> None:
    ids, mask = batch(tiny.tokenizer)
    sites = [(1, "resid"), (0, "mlp"), (1, "attn"), (0, "resid")]
    got = harvest_many(tiny.model, ids, mask, sites)
    assert len(got) == len(sites)
    for (layer, site), x in zip(sites, got, strict=True):
        torch.testing.assert_close(x, harvest(tiny.model, ids, mask, layer, site))


def test_one_forward_pass_stopped_after_the_deepest_hooked_layer(tiny: Any) -> None:
    ids, mask = batch(tiny.tokenizer)
    calls: list[str] = []
    layers = tiny.model.model.layers
    handles = [tiny.model.register_forward_pre_hook(lambda *a: calls.append("model"))]
    handles += [lay.register_forward_hook(lambda *a, i=i: calls.append(f"layer{i}")) for i, lay in enumerate(layers)]
    handles.append(tiny.model.lm_head.register_forward_hook(lambda *a: calls.append("head")))
    try:
        harvest_many(tiny.model, ids, mask, [(0, "resid"), (1, "mlp")])
    finally:
        for h in handles:
            h.remove()
    # layer 1's mlp site is its post-feedforward norm, inside layer 1: layer 1's own hook never sees an output
    assert calls == ["model", "layer0"]
    calls.clear()
    handles = [lay.register_forward_hook(lambda *a, i=i: calls.append(f"layer{i}")) for i, lay in enumerate(layers)]
    try:
        harvest_many(tiny.model, ids, mask, [(1, "resid"), (0, "attn"), (1, "resid")])
    finally:
        for h in handles:
            h.remove()
    assert calls == ["layer0", "layer1"]


def test_a_repeated_site_is_returned_at_each_place(tiny: Any) -> None:
    ids, mask = batch(tiny.tokenizer)
    a, b = harvest_many(tiny.model, ids, mask, [(1, "resid"), (1, "resid")])
    torch.testing.assert_close(a, b)


def test_no_site_or_a_bad_site_is_a_site_error(tiny: Any) -> None:
    ids, mask = batch(tiny.tokenizer)
    with pytest.raises(SiteError, match="no site given"):
        harvest_many(tiny.model, ids, mask, [])
    with pytest.raises(SiteError, match="layer 3 is out of range"):
        harvest_many(tiny.model, ids, mask, [(0, "resid"), (3, "resid")])
