"""What each short-run deviation does to a JumpReLU SAE, and why (run by hand; README, "What was tried").

Trains one SAE per variant on one activation cache (a harvest of `jumpscope demo`, `cache` or
`sweep`: its meta.json names the model, layer and site), all with the same budget and seed, and
measures each on a validation split of the *training* text that the cache never reached (the last
documents of the corpus's training split; the held-out split that every evaluation reports is never
used to choose anything):

  L0, FVU, dead (latents that never fire on the validation activations);
  quiet FVU: FVU within the low-variance half of the activations' principal directions (above 1:
    the SAE writes more variance there than the data has: noise the model downstream reads);
  typical FVU: FVU on the tokens within 4x the median norm, around their own mean (the evaluation's
    fvu_typical: what is left when the massive activations are set aside);
  dec quiet: the mean share of a live latent's decoder row in those directions (a random row: 1/2);
  delta LM loss on the validation predictions (one clean pass shared by all variants).

    .venv/bin/python benchmarks/short_recipe.py runs/demo/activations                 # the README's table
    .venv/bin/python benchmarks/short_recipe.py runs/demo/activations --only base new  # a subset
    .venv/bin/python benchmarks/short_recipe.py --tiny                                # a plumbing check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: app, trainer and benchmarks

from app.pipeline.stages import lm_source, write_activation_cache
from benchmarks.splice_damage import held_out_activations
from trainer.data.activations import ShardSource, TensorSource, take_tokens
from trainer.data.corpus import packaged_corpus
from trainer.evaluation.delta_lm import delta_lm_losses
from trainer.evaluation.metrics import evaluate
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.training.config import TrainConfig, resolve_recipe
from trainer.training.trainer import Trainer

SHUFFLE = 262_144
"""Tokens in the shuffle buffer (the sweep's and, until now, the demo's)."""
OLD_SHORT = {"decoder_init": "random", "threshold_init_rate": None}
"""The short recipe before the data-driven starts (what the README's earlier sweeps ran)."""
NO_CLIP = {"max_norm_ratio": None, "update_clip": None}
"""Massive activations trained on as they are, Adam as it is (the short recipe before max_norm_ratio; variants
above the "massive" ones were measured so)."""
CLIP = {"max_norm_ratio": 4.0, "update_clip": None}
"""The short recipe of sessions 12-13: massive activations scaled down to 4x the median norm (the "massive"
and "lowl0" variants were measured with it; update_clip 3 took its place in session 14)."""
VARIANTS: dict[str, dict[str, Any]] = {
    "before (lambda 2e-4)": {"coeff": 2e-4, "train": OLD_SHORT},
    "before + Adam beta1 0.9": {"coeff": 2e-4, "train": {**OLD_SHORT, "adam_betas": [0.9, 0.999]}},
    "before + theta0 0.012, eps 0.002": {
        "coeff": 2e-4, "sae": {"threshold_init": 0.012, "bandwidth": 0.002}, "train": OLD_SHORT,
    },
    "data rows": {"coeff": 2e-4, "train": {"threshold_init_rate": None}},
    "data rows + 1% thresholds": {"coeff": 2e-4},
    "data rows + 1% thresholds + resample/25": {"coeff": 2e-4, "train": {"resample_every": 25}},
    "data rows + 1% thresholds + eps 0.002": {"coeff": 2e-4, "sae": {"bandwidth": 0.002}},
    "new short (lambda 1.2e-4)": {"coeff": 1.2e-4},
    "new short + eps 0.002": {"coeff": 1.2e-4, "sae": {"bandwidth": 0.002}},
    "new short + eps 0.002 + resample/25": {
        "coeff": 1.2e-4, "sae": {"bandwidth": 0.002}, "train": {"resample_every": 25},
    },
    "new short + 0.3% thresholds": {"coeff": 1.2e-4, "train": {"threshold_init_rate": 0.003}},
    "new short, batch 2048": {"coeff": 1.2e-4, "train": {"batch_size": 2048}},
    "new short, batch 2048, one epoch": {"coeff": 1.2e-4, "epochs": 1.0, "train": {"batch_size": 2048}},
    "new short, batch 1024, one epoch (the demo)": {"coeff": 1.2e-4, "epochs": 1.0, "train": {"batch_size": 1024}},
    "TopK k 32, before": {"sae": {"architecture": "topk", "k": 32}, "train": {"decoder_init": "random"}},
    "TopK k 32, data rows": {"sae": {"architecture": "topk", "k": 32}},
    # The --quick sweep's budget (run with --width 2048 --epochs 1 --batch-size 1024 on its cache), at L0 ~30
    "quick JumpReLU lambda 1e-4": {"coeff": 1e-4},
    "quick JumpReLU + dead_aux 1/32": {"coeff": 1e-4, "sae": {"dead_aux": 1 / 32}},
    "quick JumpReLU + dead_aux 1/4": {"coeff": 1e-4, "sae": {"dead_aux": 0.25}},
    "quick JumpReLU + threshold lr x10": {"coeff": 1e-4, "train": {"threshold_lr_scale": 10.0}},
    "quick JumpReLU, batch 512": {"coeff": 1e-4, "train": {"batch_size": 512}},
    "quick JumpReLU, batch 512 + dead_aux 1/32": {
        "coeff": 1e-4, "sae": {"dead_aux": 1 / 32}, "train": {"batch_size": 512},
    },
    "quick TopK k 32": {"sae": {"architecture": "topk", "k": 32}},
    "quick TopK k 32, batch 512": {"sae": {"architecture": "topk", "k": 32}, "train": {"batch_size": 512}},
    # The CPU defaults' budget (--width 4096 --epochs 1 --batch-size 4096 on the sweep's cache), at L0 ~110
    "defaults JumpReLU lambda 1.7e-5": {"coeff": 1.7e-5},
    "defaults JumpReLU lambda 1.7e-5 + dead_aux 1/32 (moments seeded)": {"coeff": 1.7e-5, "sae": {"dead_aux": 1 / 32}},
    # Massive activations (max_norm_ratio, since in the short recipe): width 2048, 1 epoch, batch 512, quick cache
    "massive JumpReLU lambda 6e-5": {"coeff": 6e-5, "train": NO_CLIP},
    "massive JumpReLU lambda 6e-5 + max_norm_ratio 4": {"coeff": 6e-5, "train": CLIP},
    "massive JumpReLU lambda 6e-5, batch 256 + max_norm_ratio 4": {
        "coeff": 6e-5, "train": {**CLIP, "batch_size": 256},
    },
    "massive TopK k 12": {"sae": {"architecture": "topk", "k": 12}, "train": NO_CLIP},
    "massive TopK k 12 + max_norm_ratio 4": {
        "sae": {"architecture": "topk", "k": 12}, "train": CLIP,
    },
    "massive TopK k 32": {"sae": {"architecture": "topk", "k": 32}, "train": NO_CLIP},
    "massive TopK k 32 + max_norm_ratio 4": {
        "sae": {"architecture": "topk", "k": 32}, "train": CLIP,
    },
    "massive TopK k 32, batch 256 + max_norm_ratio 4": {
        "sae": {"architecture": "topk", "k": 32}, "train": {**CLIP, "batch_size": 256},
    },
    "massive ReLU lambda 0.02": {"sae": {"architecture": "relu"}, "coeff": 0.02, "train": NO_CLIP},
    "massive ReLU lambda 0.02 + max_norm_ratio 4": {
        "sae": {"architecture": "relu"}, "coeff": 0.02, "train": CLIP,
    },
    # Low L0 with max_norm_ratio 4 in the recipe (session 13): width 2048, 1 epoch, batch 512, quick cache, L0 ~20
    "lowl0 JumpReLU lambda 1.5e-4": {"coeff": 1.5e-4, "train": CLIP},
    "lowl0 JumpReLU lambda 1.5e-4, tokens as they are": {"coeff": 1.5e-4, "train": NO_CLIP},
    "lowl0 JumpReLU lambda 1.5e-4 + max_norm_ratio 8": {"coeff": 1.5e-4, "train": {**CLIP, "max_norm_ratio": 8.0}},
    "lowl0 JumpReLU lambda 1.5e-4 + dead_aux 1/32": {"coeff": 1.5e-4, "sae": {"dead_aux": 1 / 32}, "train": CLIP},
    "lowl0 JumpReLU lambda 1.5e-4, batch 256": {"coeff": 1.5e-4, "train": {**CLIP, "batch_size": 256}},
    "lowl0 TopK k 20": {"sae": {"architecture": "topk", "k": 20}, "train": CLIP},
    "lowl0 TopK k 20, batch 256": {"sae": {"architecture": "topk", "k": 20}, "train": {**CLIP, "batch_size": 256}},
    # (session 13 also measured max_norm_ratio around the data's mean rather than the origin, ratios 4, 8
    # and 16: not kept; README, "Massive activations and FVU")
    # Adam updates bounded per element instead (update_clip, session 13), the activations as they are
    "update JumpReLU lambda 1.5e-4 + update_clip 3": {"coeff": 1.5e-4, "train": {**NO_CLIP, "update_clip": 3.0}},
    "update JumpReLU lambda 1.5e-4 + update_clip 10": {"coeff": 1.5e-4, "train": {**NO_CLIP, "update_clip": 10.0}},
    "update TopK k 20 + update_clip 10": {
        "sae": {"architecture": "topk", "k": 20}, "train": {**NO_CLIP, "update_clip": 10.0},
    },
    "update TopK k 20 + update_clip 3": {
        "sae": {"architecture": "topk", "k": 20}, "train": {**NO_CLIP, "update_clip": 3.0},
    },
    "update JumpReLU lambda 1.5e-4 + update_clip 3 + dead_aux 1/32": {
        "coeff": 1.5e-4, "sae": {"dead_aux": 1 / 32}, "train": {**NO_CLIP, "update_clip": 3.0},
    },
    "update JumpReLU lambda 6e-5 + update_clip 3": {"coeff": 6e-5, "train": {**NO_CLIP, "update_clip": 3.0}},
    "update TopK k 32 + update_clip 3": {
        "sae": {"architecture": "topk", "k": 32}, "train": {**NO_CLIP, "update_clip": 3.0},
    },
    # JumpReLU's own schedule at low L0 with update_clip 3 in the recipe (session 14): width 2048, 1 epoch,
    # batch 512, the first 300,000 tokens of the sweep's cache (--tokens 300000), L0 ~20; TopK for its curve
    "s14 JumpReLU lambda 1.5e-4": {"coeff": 1.5e-4},
    "s14 JumpReLU lambda 1.5e-4, no lambda warm-up": {"coeff": 1.5e-4, "train": {"sparsity_warmup_steps": 1}},
    "s14 JumpReLU lambda 1.5e-4, lambda warm-up 5%": {"coeff": 1.5e-4, "train": {"sparsity_warmup_steps": 29}},
    "s14 JumpReLU lambda 1.5e-4, thresholds at 0.5%": {"coeff": 1.5e-4, "train": {"threshold_init_rate": 0.005}},
    "s14 JumpReLU lambda 1.5e-4, eps 0.0005": {"coeff": 1.5e-4, "sae": {"bandwidth": 0.0005}},
    "s14 JumpReLU lambda 1.5e-4, eps 0.003": {"coeff": 1.5e-4, "sae": {"bandwidth": 0.003}},
    "s14 JumpReLU lambda 1.5e-4, lr 2e-3": {"coeff": 1.5e-4, "train": {"lr": 2e-3}},
    "s14 JumpReLU lambda 1.5e-4, no lr decay": {"coeff": 1.5e-4, "train": {"lr_decay_steps": 0}},
    "s14 JumpReLU lambda 1.5e-4, Adam beta1 0.9": {"coeff": 1.5e-4, "train": {"adam_betas": [0.9, 0.999]}},
    "s14 JumpReLU lambda 1.5e-4, Adam beta1 0.9 + thresholds at 0.5%": {
        "coeff": 1.5e-4, "train": {"adam_betas": [0.9, 0.999], "threshold_init_rate": 0.005},
    },
    "s14 JumpReLU lambda 1.5e-4, Adam beta1 0.9, Adam as it is": {
        "coeff": 1.5e-4, "train": {"adam_betas": [0.9, 0.999], "update_clip": None},
    },
    "s14 JumpReLU lambda 6e-5": {"coeff": 6e-5},
    "s14 JumpReLU lambda 6e-5, Adam beta1 0.9": {"coeff": 6e-5, "train": {"adam_betas": [0.9, 0.999]}},
    "s14 TopK k 12": {"sae": {"architecture": "topk", "k": 12}},
    "s14 TopK k 20": {"sae": {"architecture": "topk", "k": 20}},
    "s14 TopK k 32": {"sae": {"architecture": "topk", "k": 32}},
    "s14b TopK k 12, Adam beta1 0.9": {"sae": {"architecture": "topk", "k": 12}, "train": {"adam_betas": [0.9, 0.999]}},
    "s14b TopK k 20, Adam beta1 0.9": {"sae": {"architecture": "topk", "k": 20}, "train": {"adam_betas": [0.9, 0.999]}},
    "s14b TopK k 32, Adam beta1 0.9": {"sae": {"architecture": "topk", "k": 32}, "train": {"adam_betas": [0.9, 0.999]}},
    # Steps at the CPU defaults' budget (session 15): width 4096, 1 epoch of the sweep's 1.5M-token cache,
    # batch 4,096 (366 steps, the defaults) against 1,024 (1,464 steps), JumpReLU and TopK at L0 ~20 and ~40
    "s15 JumpReLU lambda 1.5e-4": {"coeff": 1.5e-4},
    "s15 JumpReLU lambda 1.5e-4, batch 1024": {"coeff": 1.5e-4, "train": {"batch_size": 1024}},
    "s15 TopK k 20": {"sae": {"architecture": "topk", "k": 20}},
    "s15 TopK k 20, batch 1024": {"sae": {"architecture": "topk", "k": 20}, "train": {"batch_size": 1024}},
    "s15 JumpReLU lambda 8e-5": {"coeff": 8e-5},
    "s15 JumpReLU lambda 8e-5, batch 1024": {"coeff": 8e-5, "train": {"batch_size": 1024}},
    "s15 TopK k 40": {"sae": {"architecture": "topk", "k": 40}},
    "s15 TopK k 40, batch 1024": {"sae": {"architecture": "topk", "k": 40}, "train": {"batch_size": 1024}},
}  # fmt: skip
"""Name -> {coeff, epochs, sae: SAEConfig fields, train: TrainConfig fields} on top of --recipe short."""


def validation(cache: ShardSource, out: Path, n_acts: int, n_lm: int, docs: int) -> dict[str, Any]:
    """Activations and LM batches of the last `docs` documents of the training split (cached in out)."""
    path = out / "validation.pt"
    if path.exists():
        return dict(torch.load(path, weights_only=False))
    meta = cache.meta
    texts = list(packaged_corpus("train"))[-docs:]
    data = out / "validation.jsonl"
    data.write_text("".join(json.dumps({"text": doc.text}) + "\n" for doc in texts))
    src = lm_source(model=meta["model"], layer=int(meta["layer"]), site=meta.get("site", "resid"),
                    dataset=str(data), context_size=meta.get("context_size"), model_batch=16, device="cpu")  # fmt: skip
    _, x = held_out_activations(src, n_acts)
    lm_batches, _ = held_out_activations(src, n_lm)
    result = {"x": x[:n_acts], "lm_batches": lm_batches}
    torch.save(result, path)
    return result


@torch.no_grad()
def measure(sae: SAE, x: Tensor) -> dict[str, float]:
    """L0, FVU, typical FVU and dead fraction (trainer.evaluation.metrics.evaluate, as every evaluation
    reports them), quiet FVU and decoder quiet share of an inference-form SAE on x (N, d_in)."""
    held = evaluate(sae, [x], x.shape[0], batch_size=x.shape[0])
    centred = x - x.mean(0)
    pcs = torch.linalg.eigh(torch.cov(x.T)).eigenvectors.flip(1)  # (d_in, d_in), highest variance first
    quiet = pcs[:, pcs.shape[1] // 2 :]  # (d_in, d_in / 2)
    f = sae.encode(x)  # (N, d_sae)
    err = sae.decode(f) - x  # (N, d_in)
    live = (f > 0).any(0)  # (d_sae,)
    rows = torch.nn.functional.normalize(sae.W_dec[live], dim=1)  # (n_live, d_in)
    return {
        "l0": held.l0,
        "fvu": held.fvu,
        "quiet_fvu": float((err @ quiet).pow(2).sum() / (centred @ quiet).pow(2).sum()),
        "typical_fvu": held.fvu_typical,
        "dec_quiet": float((rows @ quiet).pow(2).sum(1).mean()) if len(rows) else float("nan"),
        "dead": held.dead_fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "cache", type=Path, nargs="?", help="an activation cache with meta.json (runs/demo/activations)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/short-recipe"), help="SAEs, validation, results")
    parser.add_argument("--only", nargs="+", help="variant names (or their first words) to run")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the cache (the demo's 2)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, help="train on the first N tokens of the cache (default: all)")
    parser.add_argument("--validation-docs", type=int, default=120)
    parser.add_argument("--lm-tokens", type=int, default=2048, help="validation predictions for delta LM loss")
    parser.add_argument("--tiny", action="store_true", help="harvest a tiny random Gemma 2 cache and run two variants")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    variants = VARIANTS
    if args.tiny:
        from trainer.lm.models import TINY_MODEL

        args.cache, args.width, args.validation_docs, args.lm_tokens = out / "cache", 64, 8, 256
        if not (args.cache / "meta.json").exists():
            write_activation_cache(lm_source(model=TINY_MODEL, max_tokens=8192, device="cpu"), args.cache)
        variants = {name: VARIANTS[name] for name in ("before (lambda 2e-4)", "new short (lambda 1.2e-4)")}
    if args.cache is None:
        parser.error("name an activation cache or pass --tiny")
    if args.only:
        variants = {n: v for n, v in variants.items() if any(n.startswith(o) for o in args.only)}
    cache = ShardSource(args.cache)
    val = validation(cache, out, 30_000, args.lm_tokens, args.validation_docs)
    from trainer.lm.models import load_model

    model = load_model(cache.meta["model"]).model
    x_train = take_tokens(cache, args.tokens or cache.n_tokens)  # (n, d_in) float32
    rows = []
    for i, (name, spec) in enumerate(variants.items()):
        sae_cfg = SAEConfig(d_in=cache.d_in, d_sae=args.width, **spec.get("sae", {}))
        batch = spec.get("train", {}).get("batch_size", args.batch_size)
        tokens = int(spec.get("epochs", args.epochs) * x_train.shape[0]) // batch * batch
        fields = {"batch_size": batch, **spec.get("train", {})}
        train_cfg = TrainConfig(tokens=tokens, recipe="short", sparsity_coeff=spec.get("coeff"),
                                shuffle_buffer=SHUFFLE, checkpoint_every=0, log_every=50, **fields)  # fmt: skip
        resolve_recipe(sae_cfg, train_cfg, set(spec.get("sae", {})) | set(fields))
        start = time.perf_counter()
        source = TensorSource(x_train, loop=True, description="cache")
        result = Trainer(sae_cfg, train_cfg, source, out / "saes" / str(i), progress=False).fit()
        seconds = time.perf_counter() - start
        sae = result.sae.eval()
        row = {"variant": name, "steps": result.steps, "seconds": round(seconds, 1), **measure(sae, val["x"])}
        losses = delta_lm_losses(model, {"sae": sae}, layer=int(cache.meta["layer"]),
                                 site=cache.meta.get("site", "resid"), batches=val["lm_batches"],
                                 max_tokens=args.lm_tokens)  # fmt: skip
        row["delta_lm"] = losses["sae"].delta_lm_loss
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "\n| variant | steps | L0 | FVU | typical FVU | quiet FVU | dec quiet | dead | delta LM |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['variant']} | {r['steps']} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['typical_fvu']:.3f} | "
              f"{r['quiet_fvu']:.2f} | {r['dec_quiet']:.3f} | {r['dead']:.1%} | {r['delta_lm']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
