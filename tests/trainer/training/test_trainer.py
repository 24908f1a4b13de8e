"""The training loop: resume, checkpoints, metrics, schedules, sources and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from trainer.data.activations import (
    ActivationError,
    ShardSource,
    ShuffleBuffer,
    SyntheticSource,
    SyntheticSpec,
    TensorSource,
    batches,
    write_shards,
)
from trainer.formats.native import load_native
from trainer.training.config import TrainConfig, lr_at, resolve_recipe, sparsity_at
from trainer.training.trainer import CHECKPOINT, METRICS, Trainer, TrainingInterrupted, estimate_scale


def synthetic(d_in: int = 16, **overrides: object) -> SyntheticSource:
    return SyntheticSource(SyntheticSpec(d_in=d_in, n_features=32, active_per_token=3, chunk_tokens=1000, **overrides))  # type: ignore[arg-type]


class Boom(Exception):
    """Stands for a crash in the middle of training."""


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae.safetensors"))


@pytest.mark.parametrize("arch", ["jumprelu", "relu", "topk", "gated"])
def test_resumed_run_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path: Path, arch: str) -> None:
    sae_cfg = tiny_sae_cfg(architecture=arch, k=4)
    train_cfg = tiny_train_cfg(checkpoint_every=4, shuffle_buffer=3000, dead_tokens=1024)
    straight = Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "straight", progress=False).fit()

    def crash_at_11(step: int, sae: object) -> None:
        if step == 11:
            raise Boom

    with pytest.raises(Boom):
        Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "resumed", progress=False, on_step=crash_at_11).fit()
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == 8
    resumed = Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "resumed", progress=False).fit(resume=True)

    assert resumed.steps == straight.steps == 20
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # metrics.jsonl reads as one run: the lines logged after the checkpoint were replaced.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / METRICS).read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_ctrl_c_checkpoints_the_last_complete_step_and_resume_finishes(tmp_path: Path) -> None:
    sae_cfg, train_cfg = tiny_sae_cfg(), tiny_train_cfg()
    trainer = Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "run", progress=False)

    def press_ctrl_c(step: int, sae: object) -> None:
        if step == 7:
            trainer._on_sigint(2, None)  # what the SIGINT handler does

    trainer.on_step = press_ctrl_c
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 7
    assert not (tmp_path / "run" / "sae.safetensors").exists()
    resumed = Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "run", progress=False).fit(resume=True)
    straight = Trainer(sae_cfg, train_cfg, synthetic(), tmp_path / "straight", progress=False).fit()
    torch.testing.assert_close(resumed.sae.W_dec, straight.sae.W_dec, rtol=0, atol=0)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sae_cfg, train_cfg = tiny_sae_cfg(), tiny_train_cfg(checkpoint_every=5)
    real_save = torch.save
    calls = {"n": 0}

    def save_then_die(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way through writing
            Path(str(f)).write_bytes(b"half a checkpoint")
            raise Boom
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Boom):
        Trainer(sae_cfg, train_cfg, synthetic(), tmp_path, progress=False).fit()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        Trainer(tiny_sae_cfg(), tiny_train_cfg(), synthetic(), tmp_path, progress=False).fit(resume=True)


def test_metrics_jsonl_has_the_documented_fields(tmp_path: Path) -> None:
    Trainer(tiny_sae_cfg(), tiny_train_cfg(), synthetic(), tmp_path, progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for key in ("step", "loss", "mse", "l0", "fvu", "lambda", "lr", "tokens/s", "dead_fraction"):
        assert key in rows[-1], key
    assert rows[-1]["tokens/s"] > 0
    assert 0 <= rows[-1]["fvu"] < 2
    # lambda warms up linearly from 0 and then holds.
    assert rows[0]["lambda"] == pytest.approx(1e-3 * 4 / 5)
    assert rows[-1]["lambda"] == pytest.approx(1e-3)


def test_saved_sae_records_its_normalisation_and_training(tmp_path: Path) -> None:
    result = Trainer(tiny_sae_cfg(), tiny_train_cfg(), synthetic(), tmp_path, progress=False).fit()
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for key in (
        "architecture",
        "d_in",
        "d_sae",
        "model",
        "layer",
        "site",
        "dtype",
        "normalization_scale",
        "prepend_bos",
        "context_size",
        "dataset",
        "tokens_trained",
        "jumpscope_version",
    ):
        assert key in cfg, key
    assert cfg["tokens_trained"] == 20 * 256
    assert cfg["normalization_scale"] == pytest.approx(result.scale)
    # The synthetic data has scale 10, so C is far from 1 and folding it matters.
    assert result.scale > 5
    loaded = load_native(tmp_path)
    torch.testing.assert_close(loaded.sae.W_enc, result.sae.W_enc)


def test_normalisation_scale_gives_unit_mean_squared_norm() -> None:
    x = torch.randn(5000, 8) * 7 + 3
    c = estimate_scale(x)
    assert (x / c).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="mean squared norm"):
        estimate_scale(torch.zeros(10, 8))


def test_lr_schedule_is_a_cosine_warm_up_from_a_tenth() -> None:
    cfg = TrainConfig(tokens=4096 * 5000)
    assert lr_at(0, cfg) == pytest.approx(7e-6)
    assert lr_at(500, cfg) == pytest.approx(7e-5 * (0.1 + 0.9 * 0.5))
    assert lr_at(1000, cfg) == pytest.approx(7e-5)
    assert lr_at(4999, cfg) == pytest.approx(7e-5)  # no decay in the paper
    assert sparsity_at(0, 1e-3, cfg) == 0
    assert sparsity_at(5000, 1e-3, cfg) == pytest.approx(5e-4)
    assert sparsity_at(20_000, 1e-3, cfg) == pytest.approx(1e-3)


def test_paper_defaults_and_the_short_recipe() -> None:
    sae, train = tiny_sae_cfg(), TrainConfig()
    assert (train.lr, train.adam_betas, train.batch_size) == (7e-5, (0.0, 0.999), 4096)
    assert (train.lr_warmup_steps, train.sparsity_warmup_steps, train.grad_clip) == (1000, 10_000, None)
    assert (sae.bandwidth, sae.threshold_init, sae.threshold_param) == (0.001, 0.001, "log")
    short = TrainConfig(tokens=4096 * 1000, recipe="short", lr=3e-4)
    resolve_recipe(sae, short, explicit={"lr"})
    assert sae.threshold_param == "raw"
    assert short.lr == 3e-4  # what the user set explicitly survives the recipe
    assert short.lr_warmup_steps == 50 and short.sparsity_warmup_steps == 200
    assert short.b_dec_init == "mean" and TrainConfig().b_dec_init is None  # None: the architecture's paper
    assert (short.decoder_init, short.threshold_init_rate, sae.bandwidth) == ("data", 0.01, 0.001)
    assert sae.dead_aux == 0  # AuxK on JumpReLU's dead latents is a named option in either recipe
    assert short.update_clip == 3.0 and TrainConfig().update_clip is None  # bounded Adam steps: short only
    assert short.max_norm_ratio is None  # the tokens as they are, in both recipes (a named option)
    assert short.adam_betas == (0.9, 0.999)  # momentum for JumpReLU in short runs; the paper's beta1 is 0
    assert (TrainConfig().decoder_init, TrainConfig().threshold_init_rate) == ("random", None)  # the paper's
    topk = tiny_sae_cfg(architecture="topk", k=4)
    short = TrainConfig(tokens=4096 * 1000, recipe="short")
    resolve_recipe(topk, short, explicit=set())
    assert (short.decoder_init, short.threshold_init_rate, topk.bandwidth) == ("data", None, 0.001)  # no thresholds
    assert short.adam_betas == (0.0, 0.999)  # TopK keeps the paper's betas (beta1 0.9 trained it worse)
    short = TrainConfig(tokens=4096 * 1000, recipe="short", decoder_init="random", update_clip=None)
    explicit_sae = tiny_sae_cfg(dead_aux=0.25)
    resolve_recipe(explicit_sae, short, explicit={"decoder_init", "dead_aux", "update_clip"})
    assert short.decoder_init == "random" and explicit_sae.dead_aux == 0.25 and short.update_clip is None
    assert topk.dead_aux == 0  # TopK has its own AuxK (aux_coeff)


def test_b_dec_starts_at_the_data_mean_when_asked(tmp_path: Path) -> None:
    seen: dict[str, torch.Tensor] = {}

    def first_step(step: int, sae: object) -> None:
        if step == 1:
            seen["b_dec"] = sae.b_dec.detach().clone()  # type: ignore[attr-defined]

    source = TensorSource(torch.randn(4096, 16) + 5.0, loop=True)
    cfg = tiny_train_cfg(b_dec_init="mean", tokens=256, lr=1e-9)
    result = Trainer(tiny_sae_cfg(), cfg, source, tmp_path, progress=False, on_step=first_step).fit()
    centre = torch.full((16,), 5.0) / result.scale
    # the sample mean of 1,024 tokens: within 5 standard errors of the true centre
    torch.testing.assert_close(seen["b_dec"], centre, atol=5 / 32 / result.scale, rtol=0)


def test_d_in_mismatch_between_data_and_sae_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="d_in mismatch: the activations are 16 wide but the SAE expects d_in=24"):
        Trainer(tiny_sae_cfg(d_in=24), tiny_train_cfg(), synthetic(), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_finite_source_that_runs_out_is_a_clear_error(tmp_path: Path) -> None:
    source = TensorSource(torch.randn(256 * 3, 16))
    with pytest.raises(ValueError, match="ran out after 3 steps"):
        Trainer(tiny_sae_cfg(), tiny_train_cfg(), source, tmp_path, progress=False).fit()
    assert not (tmp_path / "sae.safetensors").exists()


def test_shards_round_trip_and_train(tmp_path: Path) -> None:
    data = torch.randn(3000, 16)
    n = write_shards(
        tmp_path / "acts", TensorSource(data, chunk_tokens=700), {"model": "m", "layer": 3}, shard_tokens=1000
    )
    assert n == 3000
    assert [p.name for p in sorted((tmp_path / "acts").iterdir())] == [
        "meta.json", "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"
    ]  # fmt: skip
    source = ShardSource(tmp_path / "acts")
    assert (source.d_in, source.n_tokens, source.meta["layer"]) == (16, 3000, 3)
    torch.testing.assert_close(torch.cat(list(source)), data)
    looped = ShardSource(tmp_path / "acts", loop=True)
    Trainer(tiny_sae_cfg(), tiny_train_cfg(norm_tokens=512), looped, tmp_path / "sae", progress=False).fit()
    assert (tmp_path / "sae" / "sae.safetensors").exists()


def test_bad_activation_folders_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ActivationError, match="does not exist"):
        ShardSource(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ActivationError, match="holds no \\*.safetensors shards"):
        ShardSource(tmp_path / "empty")
    (tmp_path / "wrong").mkdir()
    save_file({"acts": torch.zeros(4, 8)}, str(tmp_path / "wrong" / "a.safetensors"))
    with pytest.raises(ActivationError, match="has no 'activations' tensor \\(found: acts\\)"):
        ShardSource(tmp_path / "wrong")
    (tmp_path / "mixed").mkdir()
    save_file({"activations": torch.zeros(4, 8)}, str(tmp_path / "mixed" / "a.safetensors"))
    save_file({"activations": torch.zeros(4, 9)}, str(tmp_path / "mixed" / "b.safetensors"))
    with pytest.raises(ActivationError, match="disagree on d_in: \\[8, 9\\]"):
        ShardSource(tmp_path / "mixed")
    (tmp_path / "flat").mkdir()
    save_file({"activations": torch.zeros(8)}, str(tmp_path / "flat" / "a.safetensors"))
    with pytest.raises(ActivationError, match="must be 2-D"):
        ShardSource(tmp_path / "flat")
    (tmp_path / "nan").mkdir()
    save_file({"activations": torch.full((4, 8), float("nan"))}, str(tmp_path / "nan" / "a.safetensors"))
    with pytest.raises(ActivationError, match="NaN"):
        list(ShardSource(tmp_path / "nan"))


def test_write_shards_never_leaves_a_complete_looking_folder_when_interrupted(tmp_path: Path) -> None:
    def chunks() -> Iterator[torch.Tensor]:
        yield torch.randn(500, 4)
        raise Boom

    with pytest.raises(Boom):
        write_shards(tmp_path / "acts", chunks(), {}, shard_tokens=100)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_shuffle_buffer_is_a_deterministic_permutation() -> None:
    data = torch.arange(10_000, dtype=torch.float32).unsqueeze(1)
    out1 = torch.cat(list(ShuffleBuffer(TensorSource(data, chunk_tokens=300), capacity=2000, seed=3)))
    out2 = torch.cat(list(ShuffleBuffer(TensorSource(data, chunk_tokens=300), capacity=2000, seed=3)))
    assert torch.equal(out1, out2)
    assert torch.equal(out1.sort(0).values, data)
    assert not torch.equal(out1, data)
    # Tokens move far: the first batch mixes the first ~2000 tokens, not just neighbours.
    assert out1[:500].std() > 300


def test_batches_recut_chunks_exactly() -> None:
    data = torch.arange(1000, dtype=torch.float32).unsqueeze(1)
    got = list(batches(TensorSource(data, chunk_tokens=70), 128))
    assert [b.shape[0] for b in got] == [128] * 7
    assert torch.equal(torch.cat(got), data[:896])
    tail = list(batches(TensorSource(data, chunk_tokens=70), 128, keep_tail=True))
    assert [b.shape[0] for b in tail] == [128] * 7 + [104]
    assert torch.equal(torch.cat(tail), data)


def test_evaluation_counts_every_token_it_is_asked_for() -> None:
    """30,000 held-out tokens at batch 4,096 are 30,000, not 28,672 (7 full batches)."""
    from trainer.evaluation.metrics import evaluate
    from trainer.saes.registry import build_sae

    sae = build_sae(tiny_sae_cfg(d_in=8, d_sae=16))
    result = evaluate(sae, TensorSource(torch.randn(40_000, 8), chunk_tokens=5_000), 30_000, batch_size=4096)
    assert result.tokens == 30_000


def test_fvu_is_also_reported_without_the_massive_tokens() -> None:
    """A few tokens at 10x the median norm (as Gemma 3 270M's massive activations) hold much of the
    variance: fvu_typical is the FVU of the other tokens around their own mean, computed in one pass."""
    from trainer.evaluation.metrics import evaluate
    from trainer.saes.registry import build_sae

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 8, generator=gen) + 5.0  # (N, d_in) a large shared mean, as residual streams
    massive = torch.arange(0, 20_000, 997)  # (21,) one token in ~1,000
    x[massive] = (
        10
        * x[massive].norm(dim=1, keepdim=True).median()
        * torch.nn.functional.normalize(torch.randn(len(massive), 8, generator=gen), dim=1)
    )
    sae = build_sae(tiny_sae_cfg(d_in=8, d_sae=16))
    result = evaluate(sae, TensorSource(x, chunk_tokens=3_000), 20_000, batch_size=4096)
    keep = torch.ones(20_000, dtype=torch.bool)
    keep[massive] = False
    with torch.no_grad():
        err = (sae.decode(sae.encode(x)) - x).double().pow(2).sum(1)  # (N,)
    typical = x[keep].double()
    expected = float(err[keep].sum() / (typical - typical.mean(0)).pow(2).sum())
    assert result.massive_fraction == len(massive) / 20_000
    assert result.fvu_typical == pytest.approx(expected, rel=1e-6)
    assert result.fvu == pytest.approx(float(err.sum() / (x.double() - x.double().mean(0)).pow(2).sum()), rel=1e-6)


def test_synthetic_held_out_stream_shares_the_dictionary_but_not_the_tokens() -> None:
    source = synthetic()
    held = source.held_out()
    assert torch.equal(source.dictionary, held.dictionary)
    assert not torch.equal(next(iter(source)), next(iter(held)))
    assert torch.equal(next(iter(source)), next(iter(synthetic())))
