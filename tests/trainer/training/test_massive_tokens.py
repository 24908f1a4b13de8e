"""max_norm_ratio: rare massive activations scaled down for the optimiser (a named deviation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from tests.trainer.training.test_short_run_options import subspace_data
from trainer.data.activations import TensorSource
from trainer.formats.native import load_native
from trainer.saes.base import SAE
from trainer.training.config import TrainConfig
from trainer.training.massive_tokens import clip_token_norms, norm_limit
from trainer.training.trainer import Trainer

EVERY = 97
"""One token in EVERY is massive (10x its norm), as Gemma 3's rare "'" tokens."""


def with_massive_tokens(n: int = 6000) -> torch.Tensor:
    x = subspace_data(n, rank=10)
    x[::EVERY] *= 10.0
    return x


def test_only_the_rows_over_the_limit_shrink_and_keep_their_direction() -> None:
    x = torch.randn(500, 8)
    x[::50] *= 20.0
    limit = norm_limit(x, 3.0)
    assert limit == pytest.approx(3.0 * float(x.norm(dim=1).median()))
    clipped = clip_token_norms(x, limit)
    over = x.norm(dim=1) > limit
    assert int(over.sum()) == 10
    torch.testing.assert_close(clipped[~over], x[~over])
    torch.testing.assert_close(clipped[over].norm(dim=1), torch.full((10,), limit))
    cos = torch.nn.functional.cosine_similarity(clipped[over], x[over], dim=1)
    torch.testing.assert_close(cos, torch.ones(10))
    with pytest.raises(ValueError, match="max_norm_ratio must be positive"):
        TrainConfig(max_norm_ratio=0.0)


def test_the_trainer_scales_down_exactly_the_massive_tokens_it_meets(tmp_path: Path) -> None:
    x = with_massive_tokens()
    cfg = tiny_train_cfg(tokens=256 * 20, max_norm_ratio=4.0, log_every=1)  # no shuffle: batches in order
    Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path / "clip", progress=False).fit()
    lines = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    per_step = [line["clipped_tokens"] for line in lines]
    expected = [len(range(0, 256 * (s + 1), EVERY)) - len(range(0, 256 * s, EVERY)) for s in range(20)]
    assert per_step == expected  # every massive token, and no other
    Trainer(tiny_sae_cfg(), tiny_train_cfg(tokens=256 * 5), TensorSource(x, loop=True), tmp_path / "as-is",
            progress=False).fit()  # fmt: skip
    assert all("clipped_tokens" not in json.loads(line) for line in (tmp_path / "as-is" / "metrics.jsonl").open())


def largest_step(tmp_path: Path, ratio: float | None, update_clip: float | None = None) -> float:
    """The largest step of the encoder in one optimiser step (Frobenius norm of the change), after the
    warm-ups, as a multiple of the median step: Adam beta1 0, batch 64, one token in 500 massive."""
    x = subspace_data(20_000, rank=10)
    x[::500] *= 10.0
    steps: list[float] = []
    previous: dict[str, torch.Tensor] = {}

    def watch(step: int, sae: SAE) -> None:
        w = sae.W_enc.detach().clone()
        if "w" in previous and step > 10:
            steps.append(float((w - previous["w"]).norm()))
        previous["w"] = w

    cfg = tiny_train_cfg(
        tokens=64 * 150, batch_size=64, max_norm_ratio=ratio, update_clip=update_clip, sparsity_coeff=0.01
    )
    Trainer(tiny_sae_cfg(threshold_param="raw"), cfg, TensorSource(x, loop=True), tmp_path / f"{ratio}-{update_clip}",
            progress=False, on_step=watch).fit()  # fmt: skip
    return max(steps) / float(torch.tensor(steps).median())


def test_clipping_bounds_the_steps_a_lone_massive_token_causes(tmp_path: Path) -> None:
    # At batch 64 most batches hold no massive token; the one that does has a gradient many times
    # the usual, which Adam's second moments (beta2 0.999) have not seen, and with beta1 0 the whole
    # encoder jumps (about 8x its median step here; about 2x with the massive tokens clipped).
    as_is, clipped = largest_step(tmp_path, None), largest_step(tmp_path, 3.0)
    assert as_is > 5.0 and clipped < 3.0, (as_is, clipped)


def test_a_clipped_run_resumes_bit_for_bit_and_refuses_another_ratio(tmp_path: Path) -> None:
    x = with_massive_tokens()
    cfg = tiny_train_cfg(tokens=256 * 12, max_norm_ratio=4.0, checkpoint_every=4)
    Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path / "a", progress=False).fit()

    def crash_at_6(step: int, sae: object) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path / "b", progress=False,
                on_step=crash_at_6).fit()  # fmt: skip
    other = tiny_train_cfg(tokens=256 * 12, max_norm_ratio=2.0, checkpoint_every=4)
    with pytest.raises(ValueError, match="max_norm_ratio 4.0, not 2.0"):
        Trainer(tiny_sae_cfg(), other, TensorSource(x, loop=True), tmp_path / "b", progress=False).fit(resume=True)
    Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path / "b", progress=False).fit(resume=True)
    a, b = load_native(tmp_path / "a").sae.state_dict(), load_native(tmp_path / "b").sae.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
