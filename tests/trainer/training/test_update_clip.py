"""update_clip: every Adam update bounded by its own gradient history, the activations as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from tests.trainer.training.test_massive_tokens import largest_step, with_massive_tokens
from trainer.data.activations import TensorSource
from trainer.training.config import TrainConfig
from trainer.training.trainer import Trainer
from trainer.training.update_clip import clip_to_second_moments


def test_only_elements_far_beyond_their_history_are_clipped_to_it() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.999))
    p.grad = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert int(clip_to_second_moments(optimizer, 3.0)) == 0  # no state before the first step: untouched
    optimizer.step()
    p.grad = torch.tensor([100.0, -100.0, 5.0, 0.5])  # element 2 has no history (v = 0): untouched
    assert int(clip_to_second_moments(optimizer, 3.0)) == 2
    expected = torch.tensor([3.0, -3.0, 5.0, 0.5])  # sqrt(v-hat) = 1 after one step
    torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=0)
    p.grad = torch.tensor([100.0, -100.0, 5.0, 0.5])
    assert int(clip_to_second_moments(optimizer, 3.0, count=False)) == 0  # not counted (off logging steps)...
    torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=0)  # ...and clipped all the same
    before = p.detach().clone()
    optimizer.step()
    assert float((p.detach() - before).abs().max()) <= 3.0 * 1e-3 * 1.01  # at most ~3 learning rates
    with pytest.raises(ValueError, match="update_clip must be positive"):
        TrainConfig(update_clip=0.0)


def test_update_clip_bounds_the_steps_a_lone_massive_token_causes(tmp_path: Path) -> None:
    # the same lone massive tokens as max_norm_ratio's test, left as they are
    # (each element within 2x its usual update: the whole encoder's largest step ~2.9x its median)
    as_is, bounded = largest_step(tmp_path, None), largest_step(tmp_path, None, update_clip=2.0)
    assert as_is > 5.0 and bounded < 3.0, (as_is, bounded)


def test_the_trainer_logs_how_many_elements_it_clipped(tmp_path: Path) -> None:
    x = with_massive_tokens()
    cfg = tiny_train_cfg(tokens=256 * 20, update_clip=3.0, log_every=1)
    Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path, progress=False).fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    counts = [line["clipped_updates"] for line in lines]
    assert counts[0] == 0 and sum(counts) > 0  # nothing to compare with at the first step
    assert all("clipped_tokens" not in line for line in lines)  # the activations as they are
