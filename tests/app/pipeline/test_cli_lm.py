"""`jumpscope cache`, `train --model` and `eval` on a real (tiny) Gemma 2, as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.app.pipeline.test_cli import run

TRAIN = ["--width", "64", "--batch-size", "256", "--recipe", "short", "--device", "cpu", "--no-progress"]


def test_cache_then_train_on_the_shards_then_eval_with_delta_lm_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = str(tiny_model_dir)
    acts = tmp_path / "acts"
    result = run("cache", "--out", str(acts), "--model", model, "--layer", "1", "--site", "attn",
                 "--tokens", "3000", "--context-size", "64", "--shard-tokens", "1000", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    meta = json.loads((acts / "meta.json").read_text())
    assert (meta["model"], meta["layer"], meta["site"], meta["n_tokens"], meta["dataset"]) == (
        model, 1, "attn", 3000, "packaged",
    )  # fmt: skip
    shards = sorted(acts.glob("*.safetensors"))
    assert len(shards) == 3
    with safe_open(shards[0], framework="pt") as f:
        assert f.get_tensor("activations").shape == (1000, 128)  # 4 heads x head_dim 32

    sae = tmp_path / "sae"
    result = run("train", "--activations", str(acts), "--tokens", "5120", *TRAIN, "--out", str(sae))
    assert result.returncode == 0, result.stderr
    cfg = json.loads((sae / "cfg.json").read_text())
    assert (cfg["model"], cfg["layer"], cfg["site"], cfg["d_in"], cfg["context_size"]) == (model, 1, "attn", 128, 64)

    result = run("eval", str(sae), "--tokens", "2000", "--lm-tokens", "500", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["tokens"] == 2000 and metrics["lm_tokens"] >= 500
    assert metrics["delta_lm_loss"] == pytest.approx(metrics["spliced_lm_loss"] - metrics["clean_lm_loss"])
    assert 0 <= metrics["fvu"] < 2


def test_train_streams_live_activations_from_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run("train", "--model", str(tiny_model_dir), "--tokens", "2560", "--context-size", "48",
                 "--shuffle-buffer", "1024", *TRAIN, "--out", str(tmp_path / "sae"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (cfg["layer"], cfg["site"], cfg["d_in"], cfg["tokens_trained"]) == (1, "resid", 64, 2560)  # middle layer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-org/no-such-model"], "neither a local model folder nor reachable"),
        (["--model", "{tmp}"], "is not a model folder: no config.json"),
        (["--model", "{model}", "--layer", "7"], "layer 7 is out of range: the model has 3 layers (0-2)"),
        (["--model", "{model}", "--site", "embed"], "unknown site 'embed': choose one of resid, mlp, attn"),
        (["--model", "{model}", "--dataset", "{empty}"], "empty"),
        (["--model", "{model}", "--dataset", "{jsonl}", "--text-column", "body"], "body"),
    ],
)
def test_bad_model_layer_site_or_dataset_is_one_line_and_writes_nothing(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "docs.jsonl").write_text('{"text": "hello there"}\n')
    values = {"tmp": str(tmp_path), "model": str(tiny_model_dir), "empty": str(tmp_path / "empty.txt"),
              "jsonl": str(tmp_path / "docs.jsonl")}  # fmt: skip
    filled = [a.format(**values) for a in args]
    for command in (["cache", "--out", str(tmp_path / "acts")], ["train", *TRAIN, "--out", str(tmp_path / "sae")]):
        result = run(*command, *filled, "--tokens", "2560")
        assert result.returncode != 0, result.stdout
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "acts").exists() and not (tmp_path / "sae" / "sae.safetensors").exists()


def test_demo_runs_its_stages_once_and_a_second_run_reuses_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["demo", "--out", str(tmp_path / "demo"), "--model", str(tiny_model_dir), "--cache-tokens", "6000",
            "--width", "64", "--epochs", "1", "--device", "cpu", "--index-tokens", "2000", "--no-serve"]  # fmt: skip
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}", "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    first = run(*args, env=env)
    assert first.returncode == 0, first.stderr
    for stage in ("stage 1/5", "stage 2/5", "stage 3/5", "stage 4/5: registering"):
        assert stage in first.stderr, stage
    metrics = json.loads((tmp_path / "demo" / "sae" / "eval.json").read_text())
    for key in ("l0", "fvu", "delta_lm_loss", "dead_fraction", "dense_fraction_1pct", "dense_fraction_10pct"):
        assert key in metrics, key
    assert "delta_lm_loss" in first.stdout
    assert "demo stage times" in first.stderr
    timed = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert set(timed) == {"load model", "harvest", "train", "evaluate", "register", "index"}
    assert "from its harvest (no model pass)" in first.stderr
    held = json.loads((tmp_path / "demo" / "heldout" / "meta.json").read_text())
    assert held["split"] == "heldout" and held["token_rows"] and metrics["tokens"] == min(50_000, held["n_tokens"])
    assert "x the harvest" in " ".join(first.stderr.split())
    assert all(seconds > 0 for seconds in timed.values())
    second = run(*args, env=env)
    assert second.returncode == 0, second.stderr
    assert "stage 1/5" not in second.stderr and "stage 2/5" not in second.stderr  # cached
    assert "is registered and indexed" in second.stderr
    assert "kept" in second.stderr  # the first run's stage times, marked as kept
    assert json.loads((tmp_path / "demo" / "timings.json").read_text())["harvest"] == timed["harvest"]
    assert "delta_lm_loss" in second.stdout
