"""The science on synthetic data with a known dictionary: recovery and JumpReLU vs ReLU."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from trainer.data.activations import SyntheticSource, SyntheticSpec
from trainer.evaluation.metrics import EvalResult, evaluate
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.training.config import TrainConfig, resolve_recipe
from trainer.training.trainer import Trainer

SPEC = SyntheticSpec(d_in=32, n_features=64, active_per_token=3.0)
TOKENS = 4_000_000


@cache
def trained(arch: str, coeff: float, out: Path) -> tuple[SAE, EvalResult]:
    source = SyntheticSource(SPEC)
    sae_cfg = SAEConfig(d_in=SPEC.d_in, d_sae=2 * SPEC.n_features, architecture=arch)  # type: ignore[arg-type]
    train_cfg = TrainConfig(
        tokens=TOKENS, batch_size=1024, recipe="short", sparsity_coeff=coeff, norm_tokens=16_384,
        checkpoint_every=0, log_every=500, device="cpu",
    )  # fmt: skip
    resolve_recipe(sae_cfg, train_cfg, set())
    result = Trainer(sae_cfg, train_cfg, source, out / f"{arch}-{coeff}", progress=False).fit()
    return result.sae, evaluate(result.sae, source.held_out(), 131_072)


def mean_best_cosine(sae: SAE, dictionary: torch.Tensor) -> float:
    """For every true direction, the best cosine with any decoder row; averaged."""
    cos = torch.nn.functional.normalize(sae.W_dec, dim=1) @ dictionary.T  # (d_sae, n_true)
    return cos.max(0).values.mean().item()


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recovery")


def test_jumprelu_recovers_the_true_directions_at_the_intended_l0(out: Path) -> None:
    sae, metrics = trained("jumprelu", 0.05, out)
    assert 2.0 < metrics.l0 < 4.5, metrics  # the data has ~3 active features per token
    assert mean_best_cosine(sae, SyntheticSource(SPEC).dictionary) > 0.9
    assert metrics.fvu < 0.2, metrics


def test_jumprelu_beats_relu_l1_on_fvu_at_matched_l0(out: Path) -> None:
    _, jump = trained("jumprelu", 0.05, out)
    # Two ReLU+L1 runs whose L0s bracket the JumpReLU L0; interpolate their FVU there.
    (_, lo), (_, hi) = trained("relu", 1.0, out), trained("relu", 0.6, out)
    assert lo.l0 <= jump.l0 <= hi.l0, (lo.l0, jump.l0, hi.l0)
    t = (jump.l0 - lo.l0) / (hi.l0 - lo.l0)
    relu_fvu_at_matched_l0 = lo.fvu + t * (hi.fvu - lo.fvu)
    assert jump.fvu < 0.5 * relu_fvu_at_matched_l0, (jump.fvu, relu_fvu_at_matched_l0)
