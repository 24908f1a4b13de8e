"""Massive activations in a cache, and what one of them does to a small-batch run (run by hand).

Prints, for an activation cache (a harvest of `jumpscope sweep`, `demo` or `cache`):

  1. the census: how many tokens have a norm over 2, 3, 4, 5 and 8x the median, the largest ratio,
     their share of all the squared norm, and (for a harvest with token rows) which tokens they are;
  2. one sweep point (`--arch`, `--value`: lambda or k) trained at `--batch-size` twice, with the
     tokens as they are and with `max_norm_ratio` R, the training FVU and the encoder's norm logged
     every step: each run's highest training FVU and where, its end (FVU, L0, dead), how many tokens
     were clipped, and the steps around the first run's largest spike with the steps whose batch held
     a massive token marked (the two runs see the same batches in the same order).

    .venv/bin/python benchmarks/massive_tokens.py runs/pareto-quick/activations     # README's batch-256 ReLU
    .venv/bin/python benchmarks/massive_tokens.py CACHE --arch topk --value 12 --batch-size 512
    .venv/bin/python benchmarks/massive_tokens.py --tiny      # a plumbing check (injected outliers)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: app, trainer and benchmarks

from app.pipeline.stages import lm_source, metadata_from_shards, write_activation_cache
from app.sweeps.run import point_plan
from trainer.data.activations import ShardSource, TensorSource, take_tokens, write_shards
from trainer.saes.base import SAE
from trainer.sweep.grid import SweepConfig, SweepPoint
from trainer.training.config import resolve_recipe
from trainer.training.trainer import METRICS, Trainer, TrainingInterrupted

RATIOS = (2.0, 3.0, 4.0, 5.0, 8.0)
"""Multiples of the median token norm the census counts."""


def census(cache: ShardSource, top: int = 8) -> dict[str, Any]:
    """Norm outliers of the whole cache, and the token ids of those over 4x the median."""
    x = take_tokens(cache, cache.n_tokens)  # (n, d_in)
    norms = x.norm(dim=1)  # (n,)
    median = float(norms.median())
    squared = norms.double().pow(2)
    over4 = norms > 4 * median  # (n,)
    out: dict[str, Any] = {
        "tokens": int(norms.numel()),
        "median_norm": median,
        "over": {f"{r:g}x": int((norms > r * median).sum()) for r in RATIOS},
        "max_ratio": float(norms.max()) / median,
        "squared_share_over_4x": float(squared[over4].sum() / squared.sum()),
    }
    if cache.token_rows:
        ids = torch.cat([rows.token_ids for rows in cache.rows()])  # (n,) in the same order as x
        positions = torch.cat([rows.positions for rows in cache.rows()])  # (n,)
        out["token_ids_over_4x"] = Counter(ids[over4].tolist()).most_common(top)
        out["positions_over_4x_median"] = float(positions[over4].float().median()) if bool(over4.any()) else None
    return out


def run(
    cache: Path, arch: str, value: float, batch: int, width: int, ratio: float | None, out: Path, steps: int | None
) -> dict[str, Any]:
    """One sweep point at this batch with max_norm_ratio `ratio` (None: tokens as they are), logged every step."""
    shards = ShardSource(cache, loop=True)
    overrides: dict[str, Any] = {"max_norm_ratio": ratio, "log_every": 1, "checkpoint_every": 0}
    cfg = SweepConfig(width=width, train_tokens=shards.n_tokens, batch_size=batch, grid={arch: (value,)},
                      overrides=overrides)  # fmt: skip
    plan = point_plan(SweepPoint(arch, value), cfg, shards=shards, out_dir=out, meta=metadata_from_shards(shards),
                      device="cpu")  # fmt: skip
    resolve_recipe(plan.sae, plan.train, plan.explicit)
    norms: list[float] = []

    def watch(step: int, sae: SAE) -> None:
        norms.append(float(sae.W_enc.detach().norm()))
        if steps is not None and step >= steps:
            trainer.request_stop()

    trainer = Trainer(plan.sae, plan.train, plan.source, out, progress=False, on_step=watch)
    start = time.perf_counter()
    with contextlib.suppress(TrainingInterrupted):  # --steps: stopped early on purpose
        trainer.fit()
    lines = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    fvu = [line["fvu"] for line in lines]
    peak = max(range(len(fvu)), key=fvu.__getitem__)
    return {
        "ratio": ratio, "steps": len(lines), "seconds": time.perf_counter() - start, "fvu": fvu,
        "encoder_norm": norms, "clipped": [line.get("clipped_tokens", 0) for line in lines],
        "peak_step": peak + 1, "peak_fvu": fvu[peak], "final_fvu": fvu[-1], "final_l0": lines[-1]["l0"],
        "final_dead": lines[-1]["dead_fraction"],
    }  # fmt: skip


def tiny_cache(out: Path) -> Path:
    """A tiny random Gemma 2 harvest with one token in 300 made massive (10x), as shards."""
    from trainer.lm.models import TINY_MODEL

    plain, cache = out / "tiny-cache", out / "tiny-massive"
    if not (plain / "meta.json").exists():
        write_activation_cache(lm_source(model=TINY_MODEL, max_tokens=16_384, device="cpu"), plain)
    if not (cache / "meta.json").exists():
        source = ShardSource(plain)
        x = take_tokens(source, source.n_tokens)
        x[::300] *= 10.0
        write_shards(cache, TensorSource(x), dict(source.meta))
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", type=Path, nargs="?", help="an activation cache with meta.json")
    parser.add_argument("--out", type=Path, default=Path("runs/massive-tokens"), help="SAEs and results.json")
    parser.add_argument("--arch", default="relu", help="architecture of the sweep point")
    parser.add_argument("--value", type=float, default=0.03, help="its knob: lambda, or k for topk")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--ratio", type=float, default=4.0, help="max_norm_ratio of the second run")
    parser.add_argument("--steps", type=int, help="stop both runs after this many steps (default: the whole run)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Gemma 2 cache with injected outliers")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.cache, args.width, args.batch_size = tiny_cache(out), 64, 256
    if args.cache is None:
        parser.error("name an activation cache or pass --tiny")
    counts = census(ShardSource(args.cache))
    print(f"census: {json.dumps(counts)}", flush=True)
    runs = []
    for ratio in (None, args.ratio):
        tag = "as-is" if ratio is None else f"clip-{ratio:g}"
        result = run(args.cache, args.arch, args.value, args.batch_size, args.width, ratio, out / tag, args.steps)
        runs.append(result)
        print(
            f"{tag}: {result['steps']} steps in {result['seconds']:.0f} s; highest training FVU "
            f"{result['peak_fvu']:.4g} at step {result['peak_step']}; end: FVU {result['final_fvu']:.3f}, "
            f"L0 {result['final_l0']:.1f}, dead {result['final_dead']:.0%}; tokens clipped {sum(result['clipped'])}",
            flush=True,
        )
    as_is, clipped = runs
    peak = as_is["peak_step"] - 1
    print("\nstep | as is: training FVU, encoder norm | massive tokens in the batch | clipped: training FVU")
    for i in range(max(0, peak - 5), min(len(as_is["fvu"]), peak + 4)):
        print(f"{i + 1:4d} | {as_is['fvu'][i]:12.4g} {as_is['encoder_norm'][i]:8.2f} | "
              f"{clipped['clipped'][i]:3d} | {clipped['fvu'][i]:.4g}")  # fmt: skip
    (out / "results.json").write_text(json.dumps({"census": counts, "runs": runs}) + "\n")


if __name__ == "__main__":
    main()
