"""The `jumpscope` command line, run as users run it: real processes, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
JUMPSCOPE = [sys.executable, "-m", "app"]
SMALL = [
    "--synthetic", "--synthetic-d-in", "16", "--synthetic-features", "32", "--synthetic-l0", "3",
    "--width", "48", "--tokens", "5120", "--batch-size", "256", "--recipe", "short", "--device", "cpu",
    "--no-progress",
]  # fmt: skip


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JUMPSCOPE, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["demo"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_train_then_eval_as_json(tmp_path: Path) -> None:
    out = tmp_path / "sae"
    result = run("train", *SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "cfg.json").exists() and (out / "metrics.jsonl").exists()
    result = run("eval", str(out), "--tokens", "4096", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {
        "l0",
        "fvu",
        "fvu_typical",
        "massive_fraction",
        "mse",
        "dead_fraction",
        "dense_fraction_1pct",
        "dense_fraction_10pct",
        "tokens",
    }
    assert metrics["tokens"] == 4096
    assert 0 < metrics["l0"] < 48
    assert "warning" not in result.stderr


def test_a_run_too_short_for_the_paper_recipe_is_warned_about_loudly(tmp_path: Path) -> None:
    """20 steps of the paper's recipe never finish its 1,000-step LR and 10,000-step lambda warm-ups."""
    paper = [a for a in SMALL if a not in ("--recipe", "short")]
    result = run("train", *paper, "--out", str(tmp_path / "paper"))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "warning: this run has 20 steps but lambda warms up over 10,000" in said
    assert "the learning rate warms up over 1,000" in said and "use --recipe short" in said
    short = run("train", *SMALL, "--out", str(tmp_path / "short"))
    assert short.returncode == 0 and "warning" not in short.stderr
    assert "--recipe short" in " ".join(run("train", "--help").stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x"], "give exactly one activation source"),
        (["--out", "x", "--synthetic", "--l1-coeff", "0.1"], "--l1-coeff is for --arch relu or gated"),
        (["--out", "x", "--activations", "missing-dir"], "does not exist"),
        (["--out", "x", "--synthetic", "--tokens", "10"], "must be at least batch_size"),
        (["--out", "x", "--synthetic", "--resume"], "no checkpoint.pt"),
        (["--out", "x", "--synthetic", "--arch", "topk", "--k", "0"], "k must be in"),
        (["--out", "x", "--synthetic", "--set", "lr"], "--set takes FIELD=VALUE"),
        (["--out", "x", "--synthetic", "--set", "tokens=9"], "--set tokens: use its own option (--tokens)"),
        (["--out", "x", "--synthetic", "--set", "colour=red"], "--set colour: not an SAEConfig or TrainConfig"),
        (["--out", "x", "--synthetic", "--set", "decoder_init=pca"], "decoder_init must be random or data"),
    ],
)
def test_train_bad_input_is_one_clear_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("train", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x" / "sae.safetensors").exists()


def test_named_deviations_by_set_reach_the_saved_config(tmp_path: Path) -> None:
    out = tmp_path / "sae"
    args = ["--set", "decoder_init=random", "--set", "threshold_lr_scale=5", "--set", "adam_betas=[0.9,0.99]",
            "--set", "update_clip=null", "--set", "max_norm_ratio=4"]  # fmt: skip
    result = run("train", *SMALL, "--out", str(out), "--bandwidth", "0.003", *args)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["train"]["decoder_init"] == "random"  # the user's choice wins over the short recipe's "data"
    assert saved["train"]["threshold_lr_scale"] == 5 and saved["train"]["adam_betas"] == [0.9, 0.99]
    assert saved["train"]["update_clip"] is None  # null turns a recipe's deviation off
    assert saved["train"]["max_norm_ratio"] == 4  # and another named one takes its place
    assert saved["train"]["threshold_init_rate"] == 0.01  # the rest of the short recipe still applies
    assert saved["sae"]["bandwidth"] == 0.003


def test_unknown_arch_lists_the_allowed_values(tmp_path: Path) -> None:
    result = run("train", "--out", "x", "--synthetic", "--arch", "sparse", cwd=tmp_path)
    assert result.returncode != 0
    assert "jumprelu" in result.stderr and "topk" in result.stderr


def test_eval_of_a_folder_that_is_not_an_sae(tmp_path: Path) -> None:
    result = run("eval", str(tmp_path))
    assert result.returncode != 0
    assert "no cfg.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_refuses_activations_of_the_wrong_width(tmp_path: Path) -> None:
    from trainer.data.activations import TensorSource, write_shards

    assert run("train", *SMALL, "--out", str(tmp_path / "sae")).returncode == 0
    write_shards(tmp_path / "acts", TensorSource(torch.randn(100, 20)), {})
    result = run("eval", str(tmp_path / "sae"), "--activations", str(tmp_path / "acts"))
    assert result.returncode != 0
    assert "d_in mismatch" in result.stderr


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_torchrun_ddp_on_two_cpu_processes_matches_one_process(tmp_path: Path, arch: str) -> None:
    """Both auxiliary losses on dead latents included (JumpReLU's dead_aux, TopK's AuxK): their
    normaliser is the whole batch's residual variance, not each rank's, and the dead latents' Adam
    moments are seeded alike on every rank."""
    torchrun = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    args = ["train", *SMALL, "--tokens", "10240", "--checkpoint-every", "20", "--arch", arch]
    if arch == "jumprelu":
        args += ["--set", "dead_aux=0.03125"]
    single = run(*args, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "app", *args, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(str(tmp_path / "single" / "sae.safetensors")), load_file(str(tmp_path / "ddp" / "sae.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    cfg = json.loads((tmp_path / "ddp" / "cfg.json").read_text())
    assert cfg["training"]["world_size"] == 2
