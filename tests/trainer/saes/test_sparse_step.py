"""The sparse training step: the same loss, gradients and training as the dense one (issue 15).

`SAE.sparse_training_step` holds f at its active entries only (trainer.saes.sparse), so decoding
and the weight gradients cost B x L0 x d_in; these tests hold it to the dense step on CPU, and
on CUDA when one is present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from tests.trainer.saes.toy_arch import TOY
from trainer.data.activations import SyntheticSource, SyntheticSpec
from trainer.saes import registry
from trainer.saes.base import SAE
from trainer.saes.gated import GatedSAE
from trainer.saes.registry import build_sae
from trainer.training.trainer import Trainer, auto_sparse_max_density

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _grads(sae: SAE, step: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sae.zero_grad()
    out = sae.training_step(x, 0.01) if step == "dense" else sae.sparse_training_step(x, 0.01)
    out.loss.backward()
    return out.loss.detach(), {name: p.grad.clone() for name, p in sae.named_parameters()}


SPARSE: dict[str, dict[str, Any]] = {
    "jumprelu-log": {"threshold_param": "log", "bandwidth": 0.3, "threshold_init": 0.2},
    "jumprelu-raw": {"threshold_param": "raw", "bandwidth": 0.3, "threshold_init": 0.2},
    "jumprelu-dead-aux": {
        "threshold_param": "raw",
        "bandwidth": 0.3,
        "threshold_init": 0.2,
        "dead_aux": 0.25,
        "k_aux": 20,
    },
    "relu": {"architecture": "relu"},
    "topk": {"architecture": "topk", "k": 12, "k_aux": 20},
    "topk-few-dead": {"architecture": "topk", "k": 12, "k_aux": 40},
    "gated": {"architecture": "gated"},
}
"""Every architecture with a sparse step (JumpReLU with a wide kernel, so that windows are non-empty;
TopK with 32 dead latents of 96 (`_prepare`): AuxK uses k_aux = 20 of them, or all 32 when k_aux = 40)."""


def _prepare(sae: SAE) -> None:
    """Biases that exercise every branch of each architecture's step (checked by the test below)."""
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        architecture = sae.cfg.architecture
        if architecture == "topk":
            # low enough that some rows' top k (and most AuxK picks) hold pre <= 0: f = 0 there
            sae.b_enc.normal_(-1.2, 0.3)
            sae.tokens_since_fired[::3] = sae.dead_tokens  # 32 dead latents: AuxK is on
        else:
            sae.b_enc.normal_(0, 0.5 if architecture == "relu" else 0.1)
        if sae.cfg.dead_aux:
            sae.tokens_since_fired[::3] = sae.dead_tokens  # 32 dead latents: the dead-latent AuxK is on
        if isinstance(sae, GatedSAE):
            sae.r_mag.normal_(0, 0.3)  # mag <= 0 at some open gates
            sae.b_mag.normal_(0, 0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(SPARSE))
@pytest.mark.parametrize("pre_enc_bias", [True, False])
def test_sparse_and_dense_steps_give_the_same_loss_and_gradients(device: str, arch: str, pre_enc_bias: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_sae_cfg(d_in=24, d_sae=96, use_pre_enc_bias=pre_enc_bias, **SPARSE[arch])
    sae = build_sae(cfg).to(device)
    assert sae.has_sparse_step
    _prepare(sae)
    x = torch.randn(64, 24, device=device)
    pre = sae.pre_acts(x).detach()
    if cfg.architecture == "jumprelu":
        threshold = sae.threshold.detach()  # type: ignore[operator]
        assert int(((pre - threshold).abs() < cfg.bandwidth / 2).sum()) > 0  # the theta gradient is exercised
    dense_out = sae.training_step(x, 0.01)
    active = int(dense_out.active.sum())
    assert 0 < active < pre.numel()
    if cfg.architecture == "topk":
        assert active < 64 * cfg.k  # some selected entries have pre <= 0
    if cfg.architecture == "topk" or cfg.dead_aux:
        assert float(dense_out.aux.detach()) > 0  # AuxK is exercised
    if cfg.architecture == "gated":
        assert active < int((pre > 0).sum()) < pre.numel()  # some gates shut, some open with mag <= 0
    dense_loss, dense = _grads(sae, "dense", x)
    sparse_loss, sparse = _grads(sae, "sparse", x)
    torch.testing.assert_close(sparse_loss, dense_loss)
    assert dense.keys() == sparse.keys()
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-5, msg=name)
    with torch.no_grad():
        sparse_out = sae.sparse_training_step(x, 0.01)
    assert torch.equal(sparse_out.active, dense_out.active)
    for field in ("mse", "sparsity", "aux", "x_hat"):
        torch.testing.assert_close(getattr(sparse_out, field), getattr(dense_out, field).detach(), msg=field)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(SPARSE))
def test_the_sparse_step_under_bf16_autocast_runs_its_encoder_matmul_in_bf16_and_the_rest_in_fp32(
    device: str, arch: str
) -> None:
    # The trainer keeps TrainConfig.autocast_bf16 on around the sparse step too: the encoder's matmul
    # is bf16, the sparse rest and every gradient fp32, as close to the fp32 step as bf16 rounding allows.
    torch.manual_seed(0)
    sae = build_sae(tiny_sae_cfg(d_in=24, d_sae=96, **SPARSE[arch])).to(device)
    _prepare(sae)
    x = torch.randn(64, 24, device=device)
    loss, exact = _grads(sae, "dense", x)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = sae.sparse_training_step(x, 0.01)
    assert out.loss.dtype == out.x_hat.dtype == torch.float32
    sae.zero_grad()
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-2, atol=0.0)
    for name, p in sae.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert float((p.grad - exact[name]).norm()) <= 0.1 * float(exact[name].norm()), name


NOTHING_FIRES: dict[str, dict[str, Any]] = {
    "jumprelu": {"threshold_init": 1e3, "threshold_param": "raw"},
    "relu": {"architecture": "relu"},
    "topk": {"architecture": "topk", "k": 4},
    "gated": {"architecture": "gated"},
}
"""A threshold (jumprelu) or an encoder bias (the others) that no pre-activation passes."""


@pytest.mark.parametrize("arch", sorted(NOTHING_FIRES))
def test_a_batch_where_nothing_fires_decodes_to_b_dec_and_trains(arch: str) -> None:
    sae = build_sae(tiny_sae_cfg(**NOTHING_FIRES[arch]))
    if arch != "jumprelu":
        with torch.no_grad():
            sae.b_enc.fill_(-1e3)
    x = torch.randn(32, 16)
    out = sae.sparse_training_step(x, 0.01)
    out.loss.backward()
    assert not out.active.any()
    torch.testing.assert_close(out.x_hat, sae.b_dec.detach().expand(32, 16))
    assert sae.b_dec.grad is not None and sae.W_enc.grad is not None and not sae.W_enc.grad.any()


TRAIN: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "jumprelu": ({"threshold_param": "raw"}, {}),
    "relu": ({"architecture": "relu"}, {}),
    "topk": ({"architecture": "topk", "d_sae": 256, "k": 2}, {"dead_tokens": 256}),
    "gated": ({"architecture": "gated"}, {}),
}
"""(SAEConfig, TrainConfig) overrides for 20 training steps of each architecture with a sparse step
(TopK: a quarter of its 256 latents miss each batch and count as dead, so that AuxK trains too)."""


def _train(tmp_path: Path, step: str, arch: str) -> tuple[dict[str, torch.Tensor], list[dict[str, object]]]:
    source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
    sae_overrides, train_overrides = TRAIN[arch]
    out = tmp_path / f"{arch}-{step}"
    result = Trainer(
        tiny_sae_cfg(**sae_overrides), tiny_train_cfg(step=step, log_every=1, **train_overrides), source, out,
        progress=False,
    ).fit()  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {k: v.detach().clone() for k, v in result.sae.state_dict().items()}, rows


def test_every_architecture_with_a_sparse_step_is_tested() -> None:
    with_sparse = {spec.name for spec in registry.specs() if spec.sae_class().has_sparse_step}
    assert with_sparse == set(TRAIN) == set(NOTHING_FIRES) == {tiny_sae_cfg(**SPARSE[a]).architecture for a in SPARSE}


@pytest.mark.parametrize("arch", sorted(TRAIN))
def test_sparse_and_dense_training_reach_the_same_weights(tmp_path: Path, arch: str) -> None:
    dense, dense_rows = _train(tmp_path, "dense", arch)
    sparse, sparse_rows = _train(tmp_path, "sparse", arch)
    assert all(not row["sparse_step"] for row in dense_rows) and all(row["sparse_step"] for row in sparse_rows)
    if arch == "topk":
        assert any(float(row["aux"]) > 0 for row in sparse_rows)  # type: ignore[arg-type]
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-4, atol=1e-4, msg=name)
    for dense_row, sparse_row in zip(dense_rows, sparse_rows, strict=True):
        for key in ("loss", "l0", "aux"):
            assert sparse_row[key] == pytest.approx(dense_row[key], rel=1e-3, abs=1e-6), key
    assert sparse_rows[-1]["fvu"] == pytest.approx(dense_rows[-1]["fvu"], rel=1e-3)


@pytest.mark.parametrize("arch", sorted(TRAIN))
def test_auto_starts_dense_and_turns_sparse_once_l0_is_low(tmp_path: Path, arch: str) -> None:
    # After every step the encoder bias is pushed so low that nothing fires: from the second step's
    # output on, L0 is 0, below auto's density. Each step follows the L0 of the step before it (auto).
    source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
    cfg = tiny_train_cfg(step="auto", log_every=1, tokens=256 * 6)

    def silence(_step: int, sae: SAE) -> None:
        with torch.no_grad():
            sae.b_enc.fill_(-1e3)

    sae_cfg = tiny_sae_cfg(**TRAIN[arch][0])
    Trainer(sae_cfg, cfg, source, tmp_path, progress=False, on_step=silence).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["sparse_step"] is False  # no L0 measured yet
    density = auto_sparse_max_density(torch.device("cpu"))
    assert rows[1]["sparse_step"] is (rows[0]["l0"] <= sae_cfg.d_sae * density)
    assert arch == "topk" or rows[1]["sparse_step"] is False  # a fresh SAE's L0 is high, but for TopK's k = 2
    assert all(row["sparse_step"] for row in rows[2:])


def test_sparse_step_of_an_architecture_without_one_is_a_clear_error(tmp_path: Path) -> None:
    registry.register(TOY)  # offset ReLU (tests/trainer/saes/toy_arch.py): no sparse step
    try:
        assert not build_sae(tiny_sae_cfg(architecture="toy")).has_sparse_step
        source = SyntheticSource(SyntheticSpec(d_in=16, n_features=64, active_per_token=3, seed=1))
        with pytest.raises(ValueError, match="toy SAEs have no sparse training step yet"):
            Trainer(tiny_sae_cfg(architecture="toy"), tiny_train_cfg(step="sparse"), source, tmp_path,
                    progress=False).fit()  # fmt: skip
        with pytest.raises(NotImplementedError, match="toy SAEs have no sparse training step yet"):
            build_sae(tiny_sae_cfg(architecture="toy")).sparse_training_step(torch.randn(4, 16), 0.01)
    finally:
        registry.unregister(TOY.name)
