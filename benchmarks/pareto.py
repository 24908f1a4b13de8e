"""The paper's Fig. 2 on Gemma 3 270M: a sparsity sweep, its budget and an honest reading (run by hand).

Runs `jumpscope sweep` (the same code: app.sweeps.run.run_sweep) at its CPU defaults or --quick,
then prints, all measured in one run:
  1. this machine's dense fp32 matmul rate (the yardstick for every time below);
  2. the budget per stage (harvest, training, evaluation) in minutes and the total;
  3. every SAE's held-out metrics;
  4. at each JumpReLU point's L0, every baseline's FVU (also without the massive-activation tokens:
     fvu_typical) and delta LM loss read off its own curve
     (linear in log L0), their ratio to JumpReLU's, and a verdict: JumpReLU wins, ties (within
     --tie of each other) or loses.

    .venv/bin/python benchmarks/pareto.py --quick            # ~14 min on a 215 GFLOP/s 2-core machine
    .venv/bin/python benchmarks/pareto.py                    # the full sweep (see the README for its budget)
    .venv/bin/python benchmarks/pareto.py --out runs/pareto-quick --quick --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.sweeps.cli import QUICK
from app.sweeps.run import SweepOptions, run_sweep
from trainer.sweep.grid import DEFAULT_GRID, QUICK_GRID, SweepConfig
from trainer.sweep.pareto import matched_l0


def matmul_gflops(seconds: float = 3.0) -> float:
    """This machine's fp32 dense matmul rate at a training-like shape (4096 x 640 @ 640 x 4096)."""
    a, b = torch.randn(4096, 640), torch.randn(640, 4096)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 4096 * 640 * 4096 * n / (time.perf_counter() - start) / 1e9


def verdict(ratio: float | None, tie: float) -> str:
    if ratio is None:
        return "n/a"
    if ratio > 1 + tie:
        return "JumpReLU wins"
    if ratio < 1 - tie:
        return "JumpReLU loses"
    return "tie"


def report(doc: dict[str, Any], tie: float) -> None:
    print(
        f"\nsweep {doc['name']}: {doc['model']} layer {doc['layer']} {doc['site']}, config {json.dumps(doc['config'])}"
    )
    budget = doc["budget"]
    print("budget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget.items()))
    print(f"\n{'architecture':<10} {'knob':>16} {'L0':>7} {'FVU':>8} {'typical':>8} {'dLM':>8} {'dead':>6} {'>1%':>6} "
          f"{'>10%':>6}")  # fmt: skip
    for r in doc["points"]:
        delta, typical = r.get("delta_lm_loss"), r.get("fvu_typical")
        print(f"{r['architecture']:<10} {r['knob'] + '=' + format(r['value'], 'g'):>16} {r['l0']:>7.1f} "
              f"{r['fvu']:>8.4f} {'-' if typical is None else format(typical, '.4f'):>8} "
              f"{'-' if delta is None else format(delta, '.4f'):>8} {r['dead_fraction']:>6.1%} "
              f"{r['dense_fraction_1pct']:>6.1%} {r['dense_fraction_10pct']:>6.1%}")  # fmt: skip
    for metric in ("fvu", "fvu_typical", "delta_lm_loss"):
        rows = matched_l0(doc["points"], metric)
        print(
            f"\n{metric} at matched L0 (ratio = baseline / JumpReLU; above 1 JumpReLU is better; tie within {tie:.0%})"
        )
        if not rows:
            print("  no JumpReLU point lies inside another architecture's L0 range")
        for m in rows:
            ratio = m["ratio"]
            shown = "   n/a" if ratio is None else f"{ratio:6.3f}"
            print(f"  L0 {m['l0']:6.1f}  {m['architecture']:<6} JumpReLU {m['reference']:.4f}  "
                  f"other {m['other']:.4f}  ratio {shown}  {verdict(ratio, tie)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the --quick sweep (4 points per architecture)")
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default runs/pareto[-quick])")
    parser.add_argument("--model", default="gemma3-270m", help="model (e.g. google/gemma-2-2b on a GPU)")
    parser.add_argument("--layer", type=int, default=None, help="layer (default: the middle one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tie", type=float, default=0.02, help="relative difference counted as a tie")
    parser.add_argument("--report-only", action="store_true", help="read OUT/results.json, train nothing")
    args = parser.parse_args()
    name = "pareto-quick" if args.quick else "pareto"
    out = args.out or Path("runs") / name
    if args.report_only:
        report(json.loads((out / "results.json").read_text()), args.tie)
        return
    gflops = matmul_gflops()
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matmul on {torch.get_num_threads()} threads")
    cfg = SweepConfig(**QUICK, grid=dict(QUICK_GRID)) if args.quick else SweepConfig(grid=dict(DEFAULT_GRID))  # type: ignore[arg-type]
    opts = SweepOptions(out=out, name=name, model=args.model, layer=args.layer, device=args.device, config=cfg)
    doc = run_sweep(opts, None, Path("jumpscope-data"), progress=sys.stderr.isatty())
    report(doc, args.tie)
    total = doc["budget"]["total"]
    print(f"\ntotal {total / 60:.1f} min at {gflops:.0f} GFLOP/s; scaled to a 340 GFLOP/s machine "
          f"(the README's reference): ~{total * gflops / 340 / 60:.0f} min")  # fmt: skip


if __name__ == "__main__":
    main()
