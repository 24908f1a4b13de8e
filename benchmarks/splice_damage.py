"""Where a sweep's delta LM loss comes from: the SAEs' errors under controlled edits (run by hand).

At equal FVU, the JumpReLU, ReLU and Gated SAEs of a sweep can cost far more delta LM loss than
TopK (README, "Reproducing the paper's Fig. 2"). FVU pools the squared error over all tokens;
the model downstream sees it token by token and direction by direction. This splices each chosen
SAE's reconstruction x_hat = x + e into the model on the same held-out predictions (one clean
pass shared by all, so the deltas are paired) after editing its error e:

  as-is        x + e                         the SAE itself
  mean-fixed   x + e - mean(e)               the error's constant part (a bias shared by every
                                             token) removed
  equalised    x + e * s_t                   every token's error rescaled to the SAE's pooled
                                             relative error: ||e_t||^2 = FVU ||x_t - mu||^2 (the
                                             same pooled FVU, spread evenly over tokens)
  random-dir   x + ||e_t|| u_t               the same per-token error norms in random directions
  norm-fixed   x_hat ||x_t|| / ||x_hat_t||   the reconstruction rescaled to the input's norm
  massive-fixed  e with its massive dimensions (the MASSIVE largest by mean |x|) set to 0
  tail-removed e without its part in the low-variance half of x's principal directions
  head-removed e without its part in the high-variance half

and prints per-token statistics of e on the same tokens: pooled FVU, L0, the fraction of tokens
where nothing fires, quantiles of the relative error r_t = ||e_t||^2 / ||x_t - mu||^2, the share
of the squared error held by the worst 1% and 10% of tokens, the constant part's share
||mean(e)||^2 / mean ||e_t||^2, and the mean cosine of e_t with x_t - mu (negative: shrinkage).
mean(e) and mu are taken on these same tokens: an oracle edit, for diagnosis only.

    .venv/bin/python benchmarks/splice_damage.py runs/pareto jumprelu-lambda3e-05 topk-k64
    .venv/bin/python benchmarks/splice_damage.py runs/pareto-quick --all --tokens 2048
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.pipeline.stages import lm_source
from trainer.evaluation.delta_lm import delta_lm_losses
from trainer.formats.native import load_native
from trainer.lm.source import LMActivationSource
from trainer.saes.base import SAE

EDITS = (
    "as-is",
    "mean-fixed",
    "equalised",
    "random-dir",
    "norm-fixed",
    "massive-fixed",
    "tail-removed",
    "head-removed",
)
MASSIVE = 2
"""Dimensions counted as massive: the largest by mean |x| (Gemma 3 270M has two holding most of
the norm)."""


def held_out_activations(
    source: LMActivationSource, n_tokens: int
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor]:
    """The held-out LM batches covering n_tokens predictions, and the activations (N, d_in) at
    the positions the splice replaces (all but BOS and padding)."""
    config: Any = source.loaded.model.config
    bos = config.get_text_config().bos_token_id
    batches, acts, counted = [], [], 0
    for batch in source.packed_batches():
        splice_at = batch.attention_mask.bool() & (batch.input_ids != bos)  # (B, T)
        acts.append(source.activations(batch)[splice_at.to(source.device)].float().cpu())  # (n, d_in)
        batches.append((batch.input_ids, batch.attention_mask, batch.special))
        keep = ~batch.special[:, :-1] & ~batch.special[:, 1:] & batch.attention_mask[:, 1:].bool()  # (B, T-1)
        counted += int(keep.sum())
        if counted >= n_tokens:
            break
    return batches, torch.cat(acts)


@torch.no_grad()
def error_stats(sae: SAE, x: Tensor, mu: Tensor, pcs: Tensor) -> dict[str, float]:
    """Per-token statistics of the SAE's error on x (N, d_in); tail_fvu is the FVU within the
    low-variance half of x's principal directions (above 1: the SAE adds variance there)."""
    f = sae.encode(x)  # (N, d_sae)
    e = sae.decode(f) - x  # (N, d_in)
    centred = x - mu  # (N, d_in)
    e2, v2 = e.pow(2).sum(1), centred.pow(2).sum(1)  # (N,), (N,)
    tail = pcs[:, pcs.shape[1] // 2 :]  # (d_in, d_in / 2)
    tail_e, tail_v = (e @ tail).pow(2), (centred @ tail).pow(2)  # (N, d_in / 2)
    r = e2 / v2
    worst = e2.sort(descending=True).values
    n = x.shape[0]
    return {
        "fvu": float(e2.sum() / v2.sum()),
        "l0": float((f > 0).sum(1).float().mean()),
        "nothing_fires": float(((f > 0).sum(1) == 0).float().mean()),
        "r_p50": float(r.quantile(0.5)),
        "r_p90": float(r.quantile(0.9)),
        "r_p99": float(r.quantile(0.99)),
        "top1%_share": float(worst[: max(1, n // 100)].sum() / e2.sum()),
        "top10%_share": float(worst[: max(1, n // 10)].sum() / e2.sum()),
        "const_share": float(e.mean(0).pow(2).sum() / e2.mean()),
        "cos_e_x": float(torch.nn.functional.cosine_similarity(e, centred, dim=1).mean()),
        "tail_fvu": float(tail_e.sum() / tail_v.sum()),
    }


def edited(
    sae: SAE, edit: str, mu: Tensor, mean_err: Tensor, fvu: float, massive: Tensor, pcs: Tensor, seed: int
) -> Callable[[Tensor], Tensor]:
    """The reconstruction (N, d_in) -> (N, d_in) with the SAE's error edited; pcs (d_in, d_in)
    holds x's principal directions as columns, highest variance first."""
    half = pcs.shape[1] // 2
    noise = torch.Generator().manual_seed(seed)  # one stream across batches

    def reconstruct(x: Tensor) -> Tensor:
        e = sae(x) - x  # (N, d_in)
        if edit == "mean-fixed":
            e = e - mean_err
        elif edit == "equalised":
            target = fvu * (x - mu).pow(2).sum(1, keepdim=True)  # (N, 1)
            e = e * (target / e.pow(2).sum(1, keepdim=True).clamp_min(1e-12)).sqrt()
        elif edit == "random-dir":
            u = torch.randn(e.shape, generator=noise).to(e)
            e = u / u.norm(dim=1, keepdim=True) * e.norm(dim=1, keepdim=True)
        elif edit == "norm-fixed":
            x_hat = x + e
            e = x_hat * (x.norm(dim=1, keepdim=True) / x_hat.norm(dim=1, keepdim=True).clamp_min(1e-12)) - x
        elif edit == "massive-fixed":
            e = e.clone()
            e[:, massive] = 0
        elif edit in ("tail-removed", "head-removed"):
            band = pcs[:, half:] if edit == "tail-removed" else pcs[:, :half]  # (d_in, d_in / 2)
            e = e - (e @ band) @ band.T
        return x + e

    return reconstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a sweep folder (runs/pareto, runs/pareto-quick)")
    parser.add_argument("saes", nargs="*", help="SAE slugs under RUN/saes (e.g. jumprelu-lambda3e-05 topk-k64)")
    parser.add_argument("--all", action="store_true", help="every SAE of the sweep")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out predictions (default 4096)")
    parser.add_argument("--edits", nargs="+", default=list(EDITS), choices=EDITS, help="error edits to splice")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    slugs = sorted(p.name for p in (args.run / "saes").iterdir()) if args.all else args.saes
    if not slugs:
        parser.error("name SAEs or pass --all")
    meta = json.loads((args.run / "activations" / "meta.json").read_text())
    record = json.loads((args.run / "sweep.json").read_text())
    layer, site = int(meta["layer"]), record["site"]
    source = lm_source(model=record["model"], layer=layer, site=site, split="heldout",
                       context_size=meta.get("context_size"), device=args.device)  # fmt: skip
    batches, x = held_out_activations(source, args.tokens)
    mu = x.mean(0)  # (d_in,)
    massive = x.abs().mean(0).topk(MASSIVE).indices  # (MASSIVE,)
    pcs = torch.linalg.eigh(torch.cov(x.T)).eigenvectors.flip(1)  # (d_in, d_in), highest variance first
    saes = {slug: load_native(args.run / "saes" / slug).sae.eval() for slug in slugs}
    stats = {slug: error_stats(sae, x, mu, pcs) for slug, sae in saes.items()}
    print(f"{args.run}: {x.shape[0]:,} spliced positions, {record['model']} layer {layer} {site}; "
          f"massive dimensions {massive.tolist()}\n")  # fmt: skip
    keys = list(next(iter(stats.values())))
    print(f"{'sae':<26}" + "".join(f"{k:>14}" for k in keys))
    for slug, s in stats.items():
        print(f"{slug:<26}" + "".join(f"{v:>14.4f}" for v in s.values()))

    reconstructs: dict[str, Callable[[Tensor], Tensor]] = {}
    for slug, sae in saes.items():
        with torch.no_grad():
            mean_err = (sae(x) - x).mean(0)  # (d_in,)
        for edit in args.edits:
            reconstructs[f"{slug}|{edit}"] = edited(sae, edit, mu, mean_err, stats[slug]["fvu"], massive, pcs, seed=0)
    model = source.loaded.model
    with torch.no_grad():
        losses = delta_lm_losses(
            model,
            reconstructs,
            layer=layer,
            site=site,
            batches=batches,
            max_tokens=args.tokens,
            progress=sys.stderr.isatty(),
        )
    first = next(iter(losses.values()))
    print(f"\ndelta LM loss (nats) on {first.tokens:,} held-out predictions, clean loss {first.clean_loss:.4f}")
    print(f"{'sae':<26}" + "".join(f"{e:>14}" for e in args.edits))
    for slug in saes:
        print(f"{slug:<26}" + "".join(f"{losses[f'{slug}|{e}'].delta_lm_loss:>14.4f}" for e in args.edits))


if __name__ == "__main__":
    main()
