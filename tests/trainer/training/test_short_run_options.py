"""The named short-run deviations (data-driven starts, the thresholds' own learning rate) and the
training loop's data path (whole-epoch shuffles from memory, the cheap mask reductions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from trainer.data.activations import EpochShuffle, ShardSource, TensorSource, batches, write_shards
from trainer.formats.native import load_native
from trainer.saes.registry import build_sae
from trainer.training.config import TrainConfig
from trainer.training.data_init import data_directions, quantile_thresholds
from trainer.training.resample import resample_dead, seed_newly_dead
from trainer.training.trainer import CHECKPOINT, Trainer, active_count, fired_latents


def subspace_data(n: int = 6000, d_in: int = 16, rank: int = 6, seed: int = 0) -> torch.Tensor:
    """(n, d_in) activations that live in a rank-dimensional subspace plus a constant offset."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d_in, rank, generator=gen)).Q  # (d_in, rank)
    codes = torch.relu(torch.randn(n, rank, generator=gen))  # (n, rank)
    return codes @ basis.T + 3.0 * torch.ones(d_in) / d_in**0.5


def test_data_directions_are_unit_centred_activations_of_distinct_tokens() -> None:
    x = subspace_data()
    centre = x.mean(0)
    rows = data_directions(x, centre, 40, torch.Generator().manual_seed(1))
    assert rows.shape == (40, 16)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(40))
    # every row is the direction of one centred token, no token twice
    cos = torch.nn.functional.normalize(x - centre, dim=1) @ rows.T  # (n, 40)
    best = cos.max(0)
    torch.testing.assert_close(best.values, torch.ones(40))
    assert len(set(best.indices.tolist())) == 40
    # more rows than tokens: drawn with replacement, still unit rows
    assert data_directions(x[:10], centre, 25, torch.Generator().manual_seed(1)).norm(dim=1).allclose(torch.ones(25))


def test_quantile_thresholds_set_each_latents_firing_rate() -> None:
    pre = torch.randn(20_000, 8) * torch.linspace(0.5, 3.0, 8)  # (N, 8): columns of different scales
    theta = quantile_thresholds(pre, 0.05)
    rates = (pre > theta).float().mean(0)
    assert torch.allclose(rates, torch.full((8,), 0.05), atol=2e-3), rates
    assert bool((quantile_thresholds(-pre.abs(), 0.05) > 0).all())  # theta stays positive
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        quantile_thresholds(pre, 1.5)


def test_data_decoder_init_starts_every_row_in_the_datas_span(tmp_path: Path) -> None:
    x = subspace_data()
    span = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:6]  # (6, d_in) the data's directions
    for init, inside in (("data", True), ("random", False)):
        cfg = tiny_train_cfg(tokens=256, decoder_init=init, lr=1e-9, lr_warmup_steps=0)
        Trainer(tiny_sae_cfg(), cfg, TensorSource(x, loop=True), tmp_path / init, progress=False).fit()
        state = torch.load(tmp_path / init / CHECKPOINT, weights_only=True)["sae"]
        w_dec = state["W_dec"]  # (d_sae, d_in) after one step at a negligible learning rate
        outside = (w_dec - (w_dec @ span.T) @ span).norm(dim=1)  # (d_sae,) each row's part off the span
        if inside:
            assert float(outside.max()) < 1e-3
            # the encoder starts as the decoder's transpose, scaled to the best first reconstruction
            ratio = state["W_enc"] / w_dec.T  # (d_in, d_sae)
            torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), atol=1e-3, rtol=1e-3)
        else:
            assert float(outside.mean()) > 0.5  # a random row has most of its mass off a 6 of 16 subspace


def test_threshold_init_rate_makes_the_first_step_fire_at_that_rate(tmp_path: Path) -> None:
    x = subspace_data(d_in=16, rank=12)
    sae_cfg = tiny_sae_cfg(d_sae=64, threshold_param="raw")

    def first_l0(folder: Path, **options: object) -> float:
        cfg = tiny_train_cfg(tokens=256, log_every=1, **options)
        Trainer(sae_cfg, cfg, TensorSource(x, loop=True), folder, progress=False).fit()
        return float(json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])["l0"])

    assert 0.07 * 64 < first_l0(tmp_path / "rate", threshold_init_rate=0.1, decoder_init="data") < 0.13 * 64
    assert first_l0(tmp_path / "paper") > 0.3 * 64  # the paper's theta_0 = 0.001 fires on about half


def test_the_thresholds_learning_rate_scales_alone(tmp_path: Path) -> None:
    x = subspace_data(d_in=16, rank=12)
    sae_cfg = tiny_sae_cfg(threshold_param="raw", threshold_init=0.05)
    moved = {}
    for scale in (1.0, 1e-6):
        cfg = tiny_train_cfg(tokens=256 * 6, threshold_lr_scale=scale, sparsity_coeff=1e-2)
        result = Trainer(sae_cfg, cfg, TensorSource(x, loop=True), tmp_path / str(scale), progress=False).fit()
        state = torch.load(tmp_path / str(scale) / CHECKPOINT, weights_only=True)
        moved[scale] = (state["sae"]["raw_threshold"] - 0.05).abs().max().item()
        groups = state["optimizer"]["param_groups"]
        assert [g["lr_scale"] for g in groups] == [1.0, scale]
        assert result.steps == 6
    assert moved[1.0] > 1e-3 and moved[1e-6] < 1e-6


def test_threshold_options_on_an_architecture_without_thresholds_name_the_problem(tmp_path: Path) -> None:
    x = subspace_data()
    for field, value in (("threshold_init_rate", 0.1), ("threshold_lr_scale", 2.0)):
        cfg = tiny_train_cfg(tokens=256, **{field: value})
        with pytest.raises(ValueError, match=f"{field}: topk SAEs have no thresholds"):
            Trainer(tiny_sae_cfg(architecture="topk", k=4), cfg, TensorSource(x, loop=True), tmp_path).fit()
    for bad in ({"decoder_init": "pca"}, {"threshold_init_rate": 1.0}, {"threshold_lr_scale": 0.0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_epoch_shuffle_streams_a_fresh_permutation_of_the_whole_data_every_epoch() -> None:
    data = torch.arange(1000, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # (1000, 3): row i holds i
    stream = batches(EpochShuffle(TensorSource(data, chunk_tokens=300, loop=True), 1000, seed=4, chunk_tokens=64), 250)
    epochs = [torch.cat([next(stream) for _ in range(4)])[:, 0].long() for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(1000))  # every token exactly once per epoch
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = batches(EpochShuffle(TensorSource(data, chunk_tokens=300), 1000, seed=4, chunk_tokens=64), 250)
    assert torch.equal(torch.cat([next(again) for _ in range(4)])[:, 0].long(), epochs[0])  # by seed


def test_a_cache_that_fits_the_shuffle_buffer_trains_in_epochs_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    write_shards(
        tmp_path / "acts", TensorSource(subspace_data(3000), chunk_tokens=700), {"layer": 1}, shard_tokens=1000
    )
    cfg = tiny_train_cfg(shuffle_buffer=3000, checkpoint_every=4, tokens=256 * 14)  # more than one epoch
    straight = Trainer(tiny_sae_cfg(), cfg, ShardSource(tmp_path / "acts", loop=True), tmp_path / "a", progress=False)
    assert straight.fit().steps == 14

    def crash_at_9(step: int, sae: object) -> None:
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_sae_cfg(), cfg, ShardSource(tmp_path / "acts", loop=True), tmp_path / "b", progress=False,
                on_step=crash_at_9).fit()  # fmt: skip
    Trainer(tiny_sae_cfg(), cfg, ShardSource(tmp_path / "acts", loop=True), tmp_path / "b", progress=False).fit(
        resume=True
    )
    a, b = load_native(tmp_path / "a").sae.state_dict(), load_native(tmp_path / "b").sae.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_mask_reductions_equal_the_plain_ones() -> None:
    mask = torch.rand(300, 70) < 0.03
    mask[:, 5] = False
    assert active_count(mask) == int(mask.sum())
    assert torch.equal(fired_latents(mask), mask.any(0))
    assert not bool(fired_latents(mask)[5])
    sae = build_sae(tiny_sae_cfg())
    assert sae.threshold_parameters() == [sae.log_threshold]


def test_resampling_restarts_dead_latents_at_error_directions_with_average_moments() -> None:
    sae = build_sae(tiny_sae_cfg(threshold_param="raw"))
    x = subspace_data(512)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.dead_tokens = 100
    loss = (sae(x) - x).pow(2).sum()
    loss.backward()
    optimizer.step()  # Adam now has moments for every entry
    dead = torch.zeros(48, dtype=torch.bool)
    dead[[3, 17, 40]] = True
    sae.tokens_since_fired[dead] = 1000
    with torch.no_grad():
        x_hat = sae(x)
    n = resample_dead(sae, optimizer, x, x_hat, l0=5.0, generator=torch.Generator().manual_seed(0))
    assert n == 3
    err = torch.nn.functional.normalize(x - x_hat, dim=1)  # (B, d_in) the batch's error directions
    rows = sae.W_dec.detach()[dead]  # (3, d_in)
    torch.testing.assert_close((rows @ err.T).max(1).values, torch.ones(3))  # each row is one token's error
    assert bool((sae.tokens_since_fired[dead] == 0).all())
    state = optimizer.state[sae.W_dec]
    assert bool((state["exp_avg"][dead] == 0).all())
    live_mean = state["exp_avg_sq"][~dead].mean(0)
    torch.testing.assert_close(state["exp_avg_sq"][dead], live_mean.expand(3, -1))
    assert sae.threshold[dead].min() > 0
    fires = (sae.pre_acts(x)[:, dead] > sae.threshold[dead]).float().mean(0)  # at about l0 / live latents
    assert bool(((fires > 0) & (fires < 0.5)).all()), fires


def test_latents_that_just_died_get_average_moments_before_dead_aux_reaches_them() -> None:
    sae = build_sae(tiny_sae_cfg(threshold_param="raw", dead_aux=1 / 32))
    x = subspace_data(512)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.dead_tokens = 100
    (sae(x) - x).pow(2).sum().backward()
    optimizer.step()
    state = optimizer.state[sae.W_enc]
    state["exp_avg_sq"][:, [3, 17, 40]] = 1e-20  # silent latents: no gradient for a long while
    was_dead = torch.zeros(48, dtype=torch.bool)
    was_dead[40] = True  # dead before this step: its moments are its own by now
    sae.tokens_since_fired[[3, 17, 40]] = 1000
    seed_newly_dead(sae, optimizer, was_dead)
    live = sae.tokens_since_fired < 100
    typical = state["exp_avg_sq"][:, live].mean(1)  # (d_in,)
    torch.testing.assert_close(state["exp_avg_sq"][:, [3, 17]], typical[:, None].expand(-1, 2))
    assert bool((state["exp_avg"][:, [3, 17]] == 0).all())
    assert bool((state["exp_avg_sq"][:, 40] == 1e-20).all())
    seed_newly_dead(sae, optimizer, sae.tokens_since_fired >= 100)  # nobody new: nothing changes
    torch.testing.assert_close(state["exp_avg_sq"][:, 3], typical)


def test_dead_aux_first_update_after_a_silence_is_an_ordinary_size() -> None:
    """The first dead_aux gradient reaching latents silent since the start moves their encoder columns
    by many times the learning rate unless their moments are seeded (what blew up a sweep run)."""
    x = subspace_data(512)
    moves = {}
    for seeded in (False, True):
        torch.manual_seed(0)
        sae = build_sae(tiny_sae_cfg(threshold_param="raw", dead_aux=1 / 32))
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3, betas=(0.0, 0.999))
        silent = torch.zeros(48, dtype=torch.bool)
        silent[:24] = True
        for _ in range(50):  # the main loss alone; the silent latents' columns get no gradient
            sae.training_step(x, 0.0).loss.backward()
            sae.W_enc.grad[:, silent] = 0  # type: ignore[index]
            optimizer.step()
            optimizer.zero_grad()
        sae.dead_tokens = 100
        was_dead = sae.tokens_since_fired >= 100
        sae.tokens_since_fired[silent] = 1000  # they count as dead from this step on
        if seeded:
            seed_newly_dead(sae, optimizer, was_dead)
        before = sae.W_enc.detach().clone()
        out = sae.training_step(x, 0.0)
        assert out.aux > 0
        out.loss.backward()
        optimizer.step()
        move = (sae.W_enc.detach() - before).abs().amax(0) / 1e-3  # (d_sae,) in units of lr
        moves[seeded] = (float(move[silent].max()), float(move[~silent].max()))
    # unseeded: about sqrt((1 - beta2^t) / (1 - beta2)) x lr, 7x at step 51 (12x at step 150)
    assert moves[False][0] > 5 * moves[False][1], moves
    assert moves[True][0] <= 2 * moves[True][1], moves  # seeded: no larger than the live latents' steps


def test_the_trainer_seeds_dying_latents_only_when_asked_and_an_auxiliary_loss_trains_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.training.trainer as trainer_module

    calls: dict[float, list[int]] = {}
    x = subspace_data(6000, rank=10)
    for alpha in (0.0, 1 / 32):  # the short recipe: seed_dead_moments, so only the auxiliary loss decides
        seen: list[int] = []

        def spy(sae: object, optimizer: torch.optim.Optimizer, was_dead: torch.Tensor, seen: list[int] = seen) -> None:
            seen.append(int(was_dead.sum()))
            seed_newly_dead(sae, optimizer, was_dead)  # type: ignore[arg-type]

        monkeypatch.setattr(trainer_module, "seed_newly_dead", spy)
        cfg = tiny_train_cfg(tokens=256 * 30, sparsity_coeff=0.2, dead_tokens=1024, seed_dead_moments=True)
        sae_cfg = tiny_sae_cfg(d_sae=64, threshold_param="raw", dead_aux=alpha)
        Trainer(sae_cfg, cfg, TensorSource(x, loop=True), tmp_path / str(alpha), progress=False).fit()
        calls[alpha] = seen
    assert calls[0.0] == []  # no auxiliary loss on dead latents: nothing to seed for
    assert len(calls[1 / 32]) == 30  # once a step, with the latents dead before the step's bookkeeping
    assert calls[1 / 32][0] == 0 and calls[1 / 32][-1] > 0, calls[1 / 32]
    seen = []
    monkeypatch.setattr(trainer_module, "seed_newly_dead", lambda *args: seen.append(1))
    topk = tiny_sae_cfg(d_sae=64, architecture="topk", k=4)
    Trainer(topk, tiny_train_cfg(tokens=256 * 10, dead_tokens=1024, seed_dead_moments=True), TensorSource(x, loop=True),
            tmp_path / "topk", progress=False).fit()  # fmt: skip
    assert len(seen) == 10  # TopK's AuxK is such a loss
    seen.clear()
    Trainer(sae_cfg, tiny_train_cfg(tokens=256 * 10, dead_tokens=1024), TensorSource(x, loop=True),
            tmp_path / "paper", progress=False).fit()  # fmt: skip
    assert seen == []  # off unless asked for (the paper's Adam), dead_aux or not


def test_a_run_with_resampling_keeps_more_latents_alive_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    x = subspace_data(6000, rank=10)
    sae_cfg = tiny_sae_cfg(d_sae=64, threshold_param="raw")
    dead = {}
    for every in (0, 5):
        cfg = tiny_train_cfg(tokens=256 * 40, sparsity_coeff=0.05, dead_tokens=1024, resample_every=every,
                             lr_decay_steps=10, checkpoint_every=7)  # fmt: skip
        Trainer(sae_cfg, cfg, TensorSource(x, loop=True), tmp_path / str(every), progress=False).fit()
        state = torch.load(tmp_path / str(every) / CHECKPOINT, weights_only=True)
        dead[every] = int((state["sae"]["tokens_since_fired"] >= 1024).sum())
    assert dead[5] < dead[0], dead

    def crash_at_19(step: int, sae: object) -> None:
        if step == 19:
            raise KeyboardInterrupt

    cfg = tiny_train_cfg(tokens=256 * 40, sparsity_coeff=0.05, dead_tokens=1024, resample_every=5,
                         lr_decay_steps=10, checkpoint_every=7)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        Trainer(sae_cfg, cfg, TensorSource(x, loop=True), tmp_path / "r", progress=False, on_step=crash_at_19).fit()
    Trainer(sae_cfg, cfg, TensorSource(x, loop=True), tmp_path / "r", progress=False).fit(resume=True)
    a, b = load_native(tmp_path / "5").sae.state_dict(), load_native(tmp_path / "r").sae.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
