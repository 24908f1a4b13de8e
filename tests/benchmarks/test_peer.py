"""benchmarks/peer.py, sae-lens's own SAEs beside the sweep's, runs end to end on a tiny synthetic sweep.

The real run is by hand on a finished sweep (README, "Reproducing the paper's Fig. 2"); this keeps the
script working against the installed sae-lens (its trainer, its configs, its saved format) and checks
that it feeds sae-lens the batches our trainer draws, in the same order and units.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from app.sweeps.results import results_doc
from app.sweeps.run import point_name, train_point
from benchmarks.peer import SweepBatches, read_sweep, sweep_train_config
from tests.benchmarks.runner import run_benchmark
from trainer.data.activations import ShardSource, SyntheticSource, SyntheticSpec, write_shards
from trainer.formats.native import SAEMetadata, load_native
from trainer.sweep.grid import SweepConfig, evaluate_points
from trainer.training.distributed import DistContext
from trainer.training.trainer import Trainer

SPEC = SyntheticSpec(d_in=32, n_features=96, active_per_token=4.0, scale=10.0)
CONFIG = SweepConfig(width=48, train_tokens=4096, batch_size=512, eval_tokens=2048, lm_tokens=0,
                     grid={"jumprelu": (1e-3, 1e-2), "topk": (4, 8)})  # fmt: skip
"""8 steps of 512 tokens per SAE; lm_tokens 0: there is no model to splice into."""


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep folder as `jumpscope sweep` leaves it, on synthetic activations: sweep.json,
    activations/, saes/ (trained by the sweep's own train_point) and results.json; plus heldout/."""
    out = tmp_path_factory.mktemp("sweep")
    meta: dict[str, Any] = {"model": "synthetic", "layer": 0, "site": "resid"}
    write_shards(out / "activations", SyntheticSource(SPEC, max_tokens=CONFIG.train_tokens), meta, shard_tokens=1500)
    held_source = SyntheticSource(SPEC, max_tokens=CONFIG.eval_tokens).held_out()
    write_shards(out / "heldout", held_source, {**meta, "split": "heldout"})
    record = {"model": "synthetic", "layer": None, "site": "resid", "context_size": None,
              "config": {k: v for k, v in CONFIG.to_json().items() if k != "grid"}}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(record))
    points = CONFIG.points()
    dirs = {point_name("tiny", p): out / "saes" / p.slug for p in points}
    for point, sae_dir in zip(points, dirs.values(), strict=True):
        train_point(point, CONFIG, activations=out / "activations", out_dir=sae_dir,
                    meta=SAEMetadata(**meta), device="cpu", progress=False)  # fmt: skip
    metrics = evaluate_points(dirs, list(ShardSource(out / "heldout")))
    rows = [{"sweep": "tiny", "sae": name, "architecture": p.architecture, "knob": p.knob, "value": p.value,
             **metrics[name], "train_seconds": 0.1} for p, name in zip(points, dirs, strict=True)]  # fmt: skip
    doc = results_doc(name="tiny", model="synthetic", layer=0, site="resid", config=CONFIG.to_json(), budget={},
                      rows=rows)  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("in_memory", [True, False], ids=["epoch-shuffle", "shuffle-buffer"])
def test_the_batches_are_the_sweep_trainers_own_in_order_and_units(tiny_sweep: Path, in_memory: bool) -> None:
    sweep = read_sweep(tiny_sweep, quick=False)
    shards = ShardSource(sweep.activations, loop=True)
    train = sweep_train_config(sweep, shards)
    if not in_memory:  # a cache larger than the shuffle buffer streams through it
        train = replace(train, shuffle_buffer=1024)
    point = CONFIG.points()[0]
    trainer = Trainer(load_native(tiny_sweep / "saes" / point.slug).sae.cfg, train, shards, tiny_sweep / "unused")
    trainer._epochs = trainer._in_memory()  # what Trainer._fit sets before it draws its stream
    assert (trainer._epochs is not None) == in_memory
    theirs = trainer._stream(DistContext(rank=0, world_size=1, device=torch.device("cpu")))
    data = SweepBatches(shards, train)
    for _, ours, expected in zip(range(train.total_steps + 3), data, theirs, strict=False):  # into a second epoch
        assert torch.equal(ours, expected)
    # the scale C the sweep's trainer divided by (kept in its SAE's metadata)
    assert data.scale == pytest.approx(load_native(tiny_sweep / "saes" / point.slug).meta.normalization_scale)


@pytest.mark.slow
def test_the_peer_table_has_both_sources_with_finite_numbers(tiny_sweep: Path, tmp_path: Path) -> None:
    # one thread: the SAEs are tiny, and a busy machine's cores are better not fought over
    result = run_benchmark("peer.py", "--sweep", str(tiny_sweep), "--heldout", str(tiny_sweep / "heldout"),
                           "--device", "cpu", "--out", str(tmp_path / "peer"), "--json", str(tmp_path / "peer.json"),
                           timeout=300, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    out = result.stdout
    lines = [line.split() for line in out.splitlines() if re.match(r"^(jumprelu|topk)\s+(jumpscope|sae-lens)\s", line)]
    assert {(cells[0], cells[1]) for cells in lines} == {
        (arch, source) for arch in ("jumprelu", "topk") for source in ("jumpscope", "sae-lens")
    }
    assert len(lines) == 8
    rows = json.loads((tmp_path / "peer.json").read_text())["rows"]
    for row in rows:
        for metric in ("l0", "fvu", "dead_fraction", "train_seconds"):
            assert math.isfinite(row[metric]), (row["source"], row["label"], metric)
    saelens = [row for row in rows if row["source"] == "sae-lens"]
    assert {row["saelens_value"] for row in saelens if row["architecture"] == "jumprelu"} == {32 * 1e-3, 32 * 1e-2}
    assert all(row["steps"] == 8 and row["conversion_error"] < 1e-4 for row in saelens)
    assert [row["l0"] for row in saelens if row["architecture"] == "topk"] == pytest.approx([4, 8], abs=0.5)
    # our SAEs, re-evaluated by the peer, give the sweep's own numbers: the same held-out activations
    check = re.search(r"check: our SAEs re-evaluated here .*: (.*)", out)
    assert check is not None, out
    differences = dict(part.split() for part in check.group(1).split(", "))
    assert set(differences) == {"l0", "fvu", "dead_fraction"}
    assert all(float(d) < 1e-6 for d in differences.values()), differences
    # sae-lens's SAEs are kept in its own format
    assert (tmp_path / "peer" / "saelens" / "topk-k4" / "sae_weights.safetensors").exists()
