"""The sparse training step: the same loss, gradients and training as the dense one (issue 15).

`SAE.sparse_training_step` holds f at its active entries only (trainer.saes.sparse), so decoding
and the weight gradients cost B x L0 x d_in; these tests hold it to the dense step on CPU, and
on CUDA when one is present.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from trainer.data.activations import SyntheticSource, SyntheticSpec
from trainer.saes.base import SAE
from trainer.saes.registry import build_sae
from trainer.training.trainer import Trainer

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _grads(sae: SAE, step: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sae.zero_grad()
    out = sae.training_step(x, 0.01) if step == "dense" else sae.sparse_training_step(x, 0.01)
    out.loss.backward()
    return out.loss.detach(), {name: p.grad.clone() for name, p in sae.named_parameters()}


SPARSE = {
    "jumprelu-log": {"threshold_param": "log", "bandwidth": 0.3, "threshold_init": 0.2},
    "jumprelu-raw": {"threshold_param": "raw", "bandwidth": 0.3, "threshold_init": 0.2},
    "relu": {"architecture": "relu"},
}
"""Every architecture with a sparse step (JumpReLU with a wide kernel, so that windows are non-empty)."""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(SPARSE))
@pytest.mark.parametrize("pre_enc_bias", [True, False])
def test_sparse_and_dense_steps_give_the_same_loss_and_gradients(device: str, arch: str, pre_enc_bias: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_sae_cfg(d_in=24, d_sae=96, use_pre_enc_bias=pre_enc_bias, **SPARSE[arch])
    sae = build_sae(cfg).to(device)
    assert sae.has_sparse_step
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.1 if arch != "relu" else 0.5)
    x = torch.randn(64, 24, device=device)
    pre = sae.pre_acts(x).detach()
    if cfg.architecture == "jumprelu":
        threshold = sae.threshold.detach()  # type: ignore[operator]
        assert int(((pre - threshold).abs() < cfg.bandwidth / 2).sum()) > 0  # the theta gradient is exercised
    active = int(sae.training_step(x, 0.01).active.sum())
    assert 0 < active < pre.numel()
    dense_loss, dense = _grads(sae, "dense", x)
    sparse_loss, sparse = _grads(sae, "sparse", x)
    torch.testing.assert_close(sparse_loss, dense_loss)
    assert dense.keys() == sparse.keys()
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_batch_where_nothing_fires_decodes_to_b_dec_and_trains() -> None:
    sae = build_sae(tiny_sae_cfg(threshold_init=1e3, threshold_param="raw"))
    x = torch.randn(32, 16)
    out = sae.sparse_training_step(x, 0.01)
    out.loss.backward()
    assert not out.active.any()
    torch.testing.assert_close(out.x_hat, sae.b_dec.detach().expand(32, 16))
    assert sae.b_dec.grad is not None and sae.W_enc.grad is not None and not sae.W_enc.grad.any()


def _train(tmp_path: Path, step: str, arch: str) -> tuple[dict[str, torch.Tensor], list[dict[str, object]]]:
    source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
    sae_cfg = tiny_sae_cfg(threshold_param="raw") if arch == "jumprelu" else tiny_sae_cfg(architecture=arch)
    out = tmp_path / f"{arch}-{step}"
    result = Trainer(sae_cfg, tiny_train_cfg(step=step), source, out, progress=False).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {k: v.detach().clone() for k, v in result.sae.state_dict().items()}, rows


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_sparse_and_dense_training_reach_the_same_weights(tmp_path: Path, arch: str) -> None:
    dense, dense_rows = _train(tmp_path, "dense", arch)
    sparse, sparse_rows = _train(tmp_path, "sparse", arch)
    assert all(not row["sparse_step"] for row in dense_rows) and all(row["sparse_step"] for row in sparse_rows)
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-4, atol=1e-4, msg=name)
    assert sparse_rows[-1]["fvu"] == pytest.approx(dense_rows[-1]["fvu"], rel=1e-3)


def test_auto_starts_dense_and_turns_sparse_once_l0_is_low(tmp_path: Path) -> None:
    # d_sae 48: sparse once L0 <= 48 / 64 < 1; a high threshold keeps L0 near 0 after the first step.
    source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
    cfg = tiny_train_cfg(step="auto", log_every=1, tokens=256 * 6)
    Trainer(tiny_sae_cfg(threshold_param="raw", threshold_init=50.0), cfg, source, tmp_path, progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["sparse_step"] is False  # no L0 measured yet
    assert all(row["sparse_step"] for row in rows[1:])


def test_sparse_step_of_an_architecture_without_one_is_a_clear_error(tmp_path: Path) -> None:
    source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
    with pytest.raises(ValueError, match="topk SAEs have no sparse training step yet"):
        Trainer(tiny_sae_cfg(architecture="topk", k=4), tiny_train_cfg(step="sparse"), source, tmp_path,
                progress=False).fit()  # fmt: skip
