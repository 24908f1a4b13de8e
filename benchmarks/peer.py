"""The peer, side by side: sae-lens's own JumpReLU and TopK SAEs, trained by sae-lens's own trainer on
a sweep's cache, measured next to ours (run by hand).

Reads a `jumpscope sweep` folder (its activation cache, sweep.json and, once finished, results.json
and saes/), then for every JumpReLU and TopK point of the sweep's grid:

  1. trains sae-lens's `JumpReLUTrainingSAE` / `TopKTrainingSAE` with `sae_lens.SAETrainer`, fed the
     sweep's own training batches: the same cache, the same shuffled token order (the sweep's seed),
     the same batch size and number of steps, in the same normalised units (the sweep's scale C);
     everything else is sae-lens's default for its method (below);
  2. evaluates those SAEs and the sweep's own (re-read from SWEEP/saes) with our evaluation code
     (trainer.evaluation: L0, FVU, dead and dense fractions) on the sweep's held-out activations,
     harvested again exactly as the sweep does (or read from --heldout DIR), and delta LM loss on the
     sweep's held-out predictions, one clean pass shared by all (paired deltas);
  3. prints one table: architecture, source (jumpscope / sae-lens), knob, L0, FVU, delta LM loss,
     dead and dense (>1%) fractions, training seconds and, for each sae-lens point, its FVU and delta
     LM loss as a multiple of ours at matched L0 (JumpReLU: read off our curve at its L0 with
     trainer.sweep.pareto.matched_l0, linear in log L0; TopK: ours at the same k); then the
     gap within each source (TopK's FVU and delta LM loss over JumpReLU's at JumpReLU's L0s, as
     pareto.py reads the sweep), the conversion's error, a check that our SAEs re-evaluated here give
     the sweep's results.json (the same held-out data), and the settings sae-lens trained with.

Ours train with the sweep's recipe (`short`), sae-lens's with its own defaults, on the same data and
budget. Where sae-lens's JumpReLU trails sae-lens's TopK by as much as ours trails ours, the gap is the
method's (at this budget); where sae-lens's JumpReLU closes it, it is our recipe's. Training seconds
are the sweep's for ours (as results.json has them) and this run's for sae-lens's, so compare them
only on an otherwise idle machine. OUT (default SWEEP/peer) keeps sae-lens's SAEs in its own format
(`jumpscope import` reads them); --json writes every row.

    .venv/bin/python benchmarks/peer.py --quick                       # runs/pareto-quick (the --quick sweep)
    .venv/bin/python benchmarks/peer.py --sweep runs/pareto           # the CPU-default sweep
    .venv/bin/python benchmarks/peer.py --sweep DIR --saelens-l0-coeff 3,30   # and sae-lens's own values
    .venv/bin/python benchmarks/peer.py --sweep DIR --heldout runs/demo/heldout --no-delta-lm   # no model

How sae-lens is driven. `LanguageModelSAERunnerConfig(sae=..., training_tokens, train_batch_size_tokens)`
gives every training setting its default, `.to_sae_trainer_config()` turns it into the trainer's
config, and `SAETrainer(cfg, sae, data_provider).fit()` trains: lr 3e-4 constant (no warm-up, no
decay), Adam betas (0.9, 0.999), gradient norm clipped at 1, decoder rows of norm 0.1 with
W_enc = W_decᵀ (`decoder_init_norm`), b_dec at zero and subtracted from the input; JumpReLU:
threshold parameterised raw, started at 0.01, rectangle bandwidth 0.05, DeepMind's "step" L0
penalty (its STE trains only the threshold), no L0 warm-up; TopK: decoder-norm rescaled latents,
AuxK coefficient 1 on latents dead for `dead_feature_window` = 1,000 steps. The data provider
yields the sweep's raw batches; sae-lens's `expected_average_only_in` normalisation scales them by
sqrt(d_in) / C, C the sweep's own scale (sqrt(E||x||^2) on its first norm_tokens), so sae-lens sees
our normalised activations times sqrt(d_in) (its convention, E||x||^2 = d_in) and, as sae-lens does,
folds that factor into the weights at the end. The trained SAE is saved in sae-lens's format under
OUT/saelens/SLUG and loaded into our inference form (trainer.formats.saelens, exact); a rerun keeps
the ones trained with the same settings (--retrain trains them again).

The knobs. k is k. sae-lens's loss is sum_d (x' - x_hat')^2 + c * L0 on x' = sqrt(d_in) * x / C,
ours sum_d (x/C - x_hat)^2 + lambda * L0, so sae-lens's loss is d_in times ours with lambda = c / d_in:
c = d_in * lambda is the same objective. `--saelens-l0-coeff` adds sae-lens JumpReLUs at c's of its
own (e.g. to reach our L0 range where the mapped ones do not; `--jumprelu ''` leaves the mapped out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.pipeline.run import TrainingPlan, has_weights
from app.pipeline.stages import metadata_from_shards
from app.sweeps.run import point_plan
from trainer.data.activations import EpochShuffle, ShardSource, ShuffleBuffer, batches, take_tokens
from trainer.evaluation.delta_lm import delta_lm_losses
from trainer.evaluation.metrics import evaluate
from trainer.formats.native import load_native
from trainer.formats.saelens import load_saelens
from trainer.saes.base import SAE
from trainer.sweep.grid import DEFAULT_GRID, QUICK_GRID, SweepConfig, SweepPoint
from trainer.sweep.pareto import matched_l0
from trainer.training.config import TrainConfig, resolve_recipe
from trainer.training.trainer import estimate_scale

ARCHITECTURES = ("jumprelu", "topk")
"""The architectures sae-lens trains here (its JumpReLU and TopK training SAEs)."""
SOURCES = ("jumpscope", "sae-lens")


@dataclass
class Sweep:
    """What the peer reads from a sweep folder."""

    folder: Path
    model: str
    """The model the sweep harvested (sweep.json: what `jumpscope sweep --model` was given)."""
    site: str
    config: SweepConfig
    """The sweep's shared budget and, from results.json when there is one, its grid."""
    results: dict[str, Any] | None
    """results.json, once the sweep has finished."""

    @property
    def activations(self) -> Path:
        return self.folder / "activations"


def read_sweep(folder: Path, quick: bool) -> Sweep:
    """The sweep in folder; its grid is results.json's, else QUICK_GRID or DEFAULT_GRID by `quick`."""
    path = folder / "sweep.json"
    if not path.exists():
        raise SystemExit(f"{folder} holds no sweep.json: run `jumpscope sweep --out {folder}` first")
    record = json.loads(path.read_text())
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    grid = results["config"]["grid"] if results else dict(QUICK_GRID if quick else DEFAULT_GRID)
    config = SweepConfig(**{**record["config"], "grid": grid})
    if not (folder / "activations" / "meta.json").exists():
        raise SystemExit(f"{folder}/activations is not harvested yet: wait for the sweep's stage 1")
    return Sweep(folder, record["model"], record.get("site", "resid"), config, results)


@dataclass
class PeerPoint:
    """One sae-lens SAE: an architecture, our knob value and sae-lens's own (l0_coefficient or k)."""

    architecture: str
    value: float
    """Our knob: lambda (JumpReLU, in our units) or k."""
    saelens_value: float
    """sae-lens's: l0_coefficient (d_in * lambda unless given) or k."""
    given: bool = False
    """An l0_coefficient of --saelens-l0-coeff (lambda = c / d_in), not one mapped from the grid."""

    @property
    def knob(self) -> str:
        return "k" if self.architecture == "topk" else "lambda"

    @property
    def slug(self) -> str:
        if self.architecture == "topk":
            return f"topk-k{int(self.value)}"
        return f"jumprelu-l0c{self.saelens_value:.6g}"

    @property
    def label(self) -> str:
        if self.architecture == "topk":
            return f"k={int(self.value)}"
        if self.given:
            return f"c={self.saelens_value:.3g} (λ {self.value:.3g})"
        return f"λ={self.value:.3g} (c {self.saelens_value:.3g})"


def peer_points(
    grid: Mapping[str, Sequence[float]], d_in: int, archs: Sequence[str], l0_coeffs: Sequence[float] | None
) -> list[PeerPoint]:
    """The sae-lens points: the grid's JumpReLU lambdas mapped to c = d_in * lambda, and l0_coeffs (c's
    given as they are), and its TopK k's."""
    points = []
    if "jumprelu" in archs:
        mapped = [PeerPoint("jumprelu", lam, lam * d_in) for lam in grid.get("jumprelu", ())]
        given = [PeerPoint("jumprelu", c / d_in, c, given=True) for c in l0_coeffs or ()]
        points += sorted(mapped + given, key=lambda p: p.saelens_value)
    if "topk" in archs:
        points += [PeerPoint("topk", k, k) for k in sorted(grid.get("topk", ()))]
    return points


def sweep_train_config(sweep: Sweep, shards: ShardSource) -> TrainConfig:
    """The TrainConfig the sweep's trainer ran with (its recipe resolved): batch, steps, seed, shuffle
    buffer, normalisation sample; the same for every point but the knob."""
    point = SweepPoint("jumprelu", 1e-4)
    plan: TrainingPlan = point_plan(point, sweep.config, shards=shards, out_dir=sweep.folder / "unused",
                                    meta=metadata_from_shards(shards), device="cpu")  # fmt: skip
    resolve_recipe(plan.sae, plan.train, plan.explicit)
    return plan.train


class SweepBatches:
    """The sweep's training batches as its Trainer draws them (one process): raw (B, d_in) float32
    batches of the cache in the seed's order, and the normalisation scale C it divides them by.

    Mirrors trainer.training.trainer.Trainer._in_memory / _stream: a cache that fits the shuffle buffer
    is held in memory and shuffled by whole epochs, else it streams through a ShuffleBuffer; C comes
    from the first norm_tokens of that data. Every iteration starts the same order over.
    """

    def __init__(self, shards: ShardSource, train: TrainConfig) -> None:
        self.shards = shards
        self.train = train
        n = shards.n_tokens
        self.epochs = EpochShuffle(shards, n, seed=train.seed) if 0 < n <= train.shuffle_buffer else None
        sample = self.epochs.data[: train.norm_tokens] if self.epochs else take_tokens(shards, train.norm_tokens)
        self.scale = estimate_scale(sample) if train.normalize else 1.0

    def __iter__(self) -> Iterator[Tensor]:
        chunks: Any = self.shards
        if self.epochs is not None:
            chunks = self.epochs
        elif self.train.shuffle_buffer > 0:
            chunks = ShuffleBuffer(chunks, self.train.shuffle_buffer, seed=self.train.seed)
        return batches(chunks, self.train.batch_size)


@dataclass
class Trained:
    """A sae-lens SAE in our inference form and what its training cost."""

    sae: SAE
    seconds: float
    steps: int
    conversion_error: float
    """max |x_hat| difference between sae-lens's own forward and ours on one batch, over the scale C."""
    settings: dict[str, Any] = field(default_factory=dict)
    kept: bool = False
    """Trained by an earlier run (OUT/saelens/SLUG with the same settings), not now."""


def train_saelens(
    point: PeerPoint, data: SweepBatches, *, d_sae: int, steps: int, seed: int, device: torch.device, out: Path
) -> Trained:
    """Train one sae-lens SAE with sae-lens's SAETrainer on the sweep's batches; save it in sae-lens's
    format in out and load it into our inference form."""
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        LanguageModelSAERunnerConfig,
        LoggingConfig,
        SAETrainer,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    d_in, batch = data.shards.d_in, data.train.batch_size
    common: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "device": str(device),
                              "normalize_activations": "expected_average_only_in"}  # fmt: skip
    sae_cfg: Any
    if point.architecture == "jumprelu":
        sae_cfg = JumpReLUTrainingSAEConfig(**common, l0_coefficient=point.saelens_value)
    else:
        sae_cfg = TopKTrainingSAEConfig(**common, k=int(point.saelens_value))
    runner = LanguageModelSAERunnerConfig(
        sae=sae_cfg, training_tokens=steps * batch, train_batch_size_tokens=batch, device=str(device), seed=seed,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None, verbose=False,
    )  # fmt: skip
    trainer_cfg = runner.to_sae_trainer_config()
    torch.manual_seed(seed)
    sae: Any = JumpReLUTrainingSAE(sae_cfg) if point.architecture == "jumprelu" else TopKTrainingSAE(sae_cfg)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(data))
    trainer.activation_scaler.scaling_factor = math.sqrt(d_in) / data.scale  # our C, sae-lens's convention
    start = time.perf_counter()
    trained = trainer.fit()  # folds the scaling factor: the SAE reads raw activations
    seconds = time.perf_counter() - start
    folder = out / point.slug
    trained.save_inference_model(folder)
    ours = load_saelens(folder).sae.eval()
    probe = next(iter(data))[:1024].to(device)
    with torch.no_grad():
        error = float((trained.forward(probe) - ours.forward(probe)).abs().max()) / data.scale  # in units of C
    trainer_fields = ("lr", "lr_scheduler_name", "lr_warm_up_steps", "lr_decay_steps", "adam_beta1", "adam_beta2",
                      "dead_feature_window")  # fmt: skip
    sae_fields = ("decoder_init_norm", "apply_b_dec_to_input", "jumprelu_init_threshold", "jumprelu_bandwidth",
                  "jumprelu_sparsity_loss_mode", "jumprelu_ste_to_input", "l0_warm_up_steps", "l0_coefficient",
                  "k", "aux_loss_coefficient", "rescale_acts_by_decoder_norm")  # fmt: skip
    settings = {name: getattr(trainer_cfg, name) for name in trainer_fields}
    settings |= {name: getattr(sae_cfg, name) for name in sae_fields if hasattr(sae_cfg, name)}
    settings |= {"grad_clip_norm": 1.0, "scaling_factor": math.sqrt(d_in) / data.scale}  # clip: SAETrainer's own
    record = {**run_key(point, data, d_sae=d_sae, steps=steps), "seconds": seconds, "conversion_error": error,
              "settings": settings}  # fmt: skip
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Trained(ours, seconds, trainer.n_training_steps, error, settings)


RECORD = "peer.json"
"""Beside each saved sae-lens SAE: what it was trained on and how long it took (a rerun keeps it)."""


def run_key(point: PeerPoint, data: SweepBatches, *, d_sae: int, steps: int) -> dict[str, Any]:
    """What makes a saved sae-lens SAE the one this run would train."""
    from sae_lens import __version__

    return {"architecture": point.architecture, "saelens_value": point.saelens_value, "d_sae": d_sae,
            "steps": steps, "batch_size": data.train.batch_size, "seed": data.train.seed, "scale": data.scale,
            "n_tokens": data.shards.n_tokens, "sae_lens_version": __version__}  # fmt: skip


def kept(point: PeerPoint, data: SweepBatches, *, d_sae: int, steps: int, folder: Path) -> Trained | None:
    """The sae-lens SAE an earlier run saved in folder, when it was trained the way this run would."""
    path = folder / RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    key = run_key(point, data, d_sae=d_sae, steps=steps)
    if {k: record.get(k) for k in key} != key:
        return None
    sae = load_saelens(folder).sae.eval()
    return Trained(sae, record["seconds"], steps, record["conversion_error"], record["settings"], kept=True)


@dataclass
class HeldOut:
    """The sweep's held-out activations and, with its model, its held-out predictions."""

    activations: list[Tensor]
    model: Any = None
    layer: int | None = None
    site: str = "resid"
    lm_batches: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: float = 0.0


def held_out_from_model(sweep: Sweep, shards: ShardSource, device: str, lm: bool) -> HeldOut:
    """What app.sweeps.run.run_sweep evaluates on: eval_tokens held-out activations of the sweep's model,
    layer and site, and (lm) the held-out batches of its delta LM loss, up to lm_tokens predictions."""
    from app.pipeline.stages import lm_source
    from trainer.lm.source import lm_batches

    start = time.perf_counter()
    layer = shards.meta.get("layer")
    cfg = sweep.config
    context = shards.meta.get("context_size")
    held = lm_source(model=sweep.model, layer=layer, site=sweep.site, split="heldout", context_size=context,
                     device=device, max_tokens=cfg.eval_tokens)  # fmt: skip
    acts = list(held)
    predictions = _lm_prefix(lm_batches(held), cfg.lm_tokens) if lm and cfg.lm_tokens > 0 else []
    return HeldOut(acts, held.loaded.model, held.cfg.layer, sweep.site, predictions, held.device,
                   time.perf_counter() - start)  # fmt: skip


def _lm_prefix(batches_: Iterator[tuple[Tensor, Tensor, Tensor]], n_tokens: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The first batches holding n_tokens counted predictions (delta_lm_losses stops at the same one)."""
    kept, counted = [], 0
    for input_ids, attention_mask, special in batches_:
        kept.append((input_ids, attention_mask, special))
        counted += int((~special[:, :-1] & ~special[:, 1:] & attention_mask[:, 1:].bool()).sum())
        if counted >= n_tokens:
            break
    return kept


def measure(
    saes: dict[str, SAE], held: HeldOut, lm_tokens: int, progress: bool
) -> tuple[dict[str, dict[str, Any]], float, float]:
    """Our metrics of every SAE on the same held-out activations and, with a model, delta LM loss on the
    same predictions (one clean pass for all); also the seconds each part took."""
    start = time.perf_counter()
    n_tokens = sum(chunk.shape[0] for chunk in held.activations)
    results = {name: asdict(evaluate(sae.to(held.device).eval(), held.activations, n_tokens, device=held.device))
               for name, sae in saes.items()}  # fmt: skip
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if held.model is not None and held.lm_batches and held.layer is not None:
        reconstructs = {name: sae.forward for name, sae in saes.items()}
        losses = delta_lm_losses(held.model, reconstructs, layer=held.layer, site=held.site, batches=held.lm_batches,
                                 max_tokens=lm_tokens, progress=progress)  # fmt: skip
        for name, loss in losses.items():
            results[name] |= {"delta_lm_loss": loss.delta_lm_loss, "clean_lm_loss": loss.clean_loss,
                              "spliced_lm_loss": loss.spliced_loss, "lm_tokens": loss.tokens}  # fmt: skip
    return results, eval_seconds, time.perf_counter() - start


def ratio_to_ours(rows: list[dict[str, Any]], row: dict[str, Any], metric: str) -> float | None:
    """A sae-lens row's metric over ours of the same architecture: JumpReLU's read off our curve at its
    L0 (trainer.sweep.pareto.matched_l0, linear in log L0), TopK's at the same k (k is the sparsity);
    None outside our L0 range, without our point, or unless both are positive."""
    value = row.get(metric)
    mine = [r for r in rows if r["source"] == "jumpscope" and r["architecture"] == row["architecture"]]
    other: float | None = None
    if value is None:
        return None
    if row["architecture"] == "topk":
        other = next((r.get(metric) for r in mine if r["value"] == row["value"]), None)
    else:
        curve = [{"architecture": "jumpscope", "l0": r["l0"], metric: r.get(metric)} for r in mine]
        point = {"architecture": "sae-lens", "l0": row["l0"], metric: value}
        other = next((m["other"] for m in matched_l0([*curve, point], metric, reference="sae-lens")), None)
    if other is None or not (value > 0 and other > 0):
        return None
    return float(value / other)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table (fixed-width, one line per SAE)."""
    head = (f"{'architecture':<12} {'source':<9} {'knob':>22} {'L0':>7} {'FVU':>8} {'dLM':>8} {'dead':>6} "
            f"{'>1%':>6} {'train s':>8} {'FVU/ours':>9} {'dLM/ours':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        fvu_ratio = ratio_to_ours(rows, r, "fvu") if r["source"] == "sae-lens" else None
        lm_ratio = ratio_to_ours(rows, r, "delta_lm_loss") if r["source"] == "sae-lens" else None
        lines.append(
            f"{r['architecture']:<12} {r['source']:<9} {r['label']:>22} {r['l0']:>7.1f} {r['fvu']:>8.4f} "
            f"{_fmt(r.get('delta_lm_loss'), '.4f'):>8} {r['dead_fraction']:>6.1%} {r['dense_fraction_1pct']:>6.1%} "
            f"{_fmt(r.get('train_seconds'), '.1f'):>8} {_fmt(fvu_ratio, '.3f'):>9} {_fmt(lm_ratio, '.3f'):>9}"
        )
    return "\n".join(lines)


def check_against_results(rows: list[dict[str, Any]], results: dict[str, Any] | None) -> str:
    """How far our SAEs re-evaluated here are from the sweep's own results.json (0: the same held-out)."""
    if results is None:
        return "check: no results.json yet (the sweep has not finished): nothing to compare our numbers with"
    recorded = {(p["architecture"], float(p["value"])): p for p in results["points"]}
    diffs: dict[str, float] = {}
    for r in rows:
        rec = recorded.get((r["architecture"], float(r["value"])))
        if r["source"] != "jumpscope" or rec is None or not r.get("re_evaluated"):
            continue
        for metric in ("l0", "fvu", "dead_fraction", "delta_lm_loss"):
            if r.get(metric) is not None and rec.get(metric) is not None:
                diffs[metric] = max(diffs.get(metric, 0.0), abs(float(r[metric]) - float(rec[metric])))
    if not diffs:
        return "check: none of our SAEs was re-evaluated here"
    shown = ", ".join(f"{m} {d:.2g}" for m, d in diffs.items())
    return f"check: our SAEs re-evaluated here vs the sweep's results.json, max |difference|: {shown}"


def train_peers(
    points: Sequence[PeerPoint],
    data: SweepBatches,
    *,
    d_sae: int,
    steps: int,
    device: torch.device,
    out: Path | None,
    retrain: bool = False,
) -> dict[str, tuple[PeerPoint, Trained]]:
    """Every sae-lens point, trained in turn on the same batches and saved under out/saelens (or nowhere);
    one saved there by an earlier run with the same settings is kept unless retrain."""
    trained = {}
    for i, point in enumerate(points):
        earlier = None if out is None or retrain else kept(point, data, d_sae=d_sae, steps=steps,
                                                             folder=out / "saelens" / point.slug)  # fmt: skip
        print(f"[{i + 1}/{len(points)}] sae-lens {point.architecture} {point.label}"
              + (" (kept from an earlier run)" if earlier else ""), file=sys.stderr)  # fmt: skip
        if earlier is not None:
            trained[f"sae-lens:{point.slug}"] = (point, earlier)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) if out is None else out / "saelens"
            result = train_saelens(point, data, d_sae=d_sae, steps=steps, seed=data.train.seed, device=device,
                                   out=folder)  # fmt: skip
        trained[f"sae-lens:{point.slug}"] = (point, result)
    return trained


def our_saes(sweep: Sweep, archs: Sequence[str]) -> dict[str, tuple[SweepPoint, SAE | None]]:
    """The sweep's own SAEs of these architectures (None where SWEEP/saes/SLUG holds no weights yet)."""
    ours: dict[str, tuple[SweepPoint, SAE | None]] = {}
    for arch in archs:
        for value in sorted(float(v) for v in sweep.config.grid.get(arch, ())):
            point = SweepPoint(arch, value)
            sae_dir = sweep.folder / "saes" / point.slug
            ours[f"jumpscope:{point.slug}"] = (point, load_native(sae_dir).sae if has_weights(sae_dir) else None)
    return ours


def table_rows(
    sweep: Sweep,
    ours: dict[str, tuple[SweepPoint, SAE | None]],
    trained: dict[str, tuple[PeerPoint, Trained]],
    metrics: dict[str, dict[str, Any]],
    steps: int,
) -> list[dict[str, Any]]:
    """One row per SAE: ours measured here (else as results.json has it), then sae-lens's."""
    recorded = {(p["architecture"], float(p["value"])): p for p in (sweep.results or {}).get("points", [])}
    rows: list[dict[str, Any]] = []
    for name, (point, sae) in ours.items():
        rec = recorded.get((point.architecture, point.value))
        measured = metrics.get(name) if sae is not None else None
        if measured is None and rec is None:
            continue
        base = measured or {k: v for k, v in (rec or {}).items() if k not in ("sweep", "sae")}
        label = f"k={int(point.value)}" if point.knob == "k" else f"λ={point.value:.3g}"
        rows.append({**base, "architecture": point.architecture, "source": "jumpscope", "knob": point.knob,
                     "value": point.value, "label": label, "re_evaluated": measured is not None, "steps": steps,
                     "train_seconds": rec.get("train_seconds") if rec else None})  # fmt: skip
    for name, (peer, t) in trained.items():
        rows.append({**metrics[name], "architecture": peer.architecture, "source": "sae-lens", "knob": peer.knob,
                     "value": peer.value, "saelens_value": peer.saelens_value, "label": peer.label,
                     "train_seconds": t.seconds, "steps": t.steps, "conversion_error": t.conversion_error,
                     "settings": t.settings, "kept": t.kept})  # fmt: skip
    rows.sort(key=lambda r: (ARCHITECTURES.index(r["architecture"]), SOURCES.index(r["source"]), r["l0"]))
    return rows


def gap_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Within each source, TopK against JumpReLU at JumpReLU's L0s (matched_l0, as pareto.py reads a sweep):
    the same gap in both sources is the method's, a gap only in ours is our recipe's."""
    lines = []
    for metric in ("fvu", "delta_lm_loss"):
        for source in SOURCES:
            found = matched_l0([r for r in rows if r["source"] == source], metric, reference="jumprelu")
            shown = [f"L0 {m['l0']:.1f}: {m['ratio']:.3f}" for m in found if m["ratio"] is not None]
            if shown:
                lines.append(f"{metric} TopK / JumpReLU at JumpReLU's L0, {source}: " + ", ".join(shown))
    return lines


def notes(rows: list[dict[str, Any]], sweep: Sweep, archs: Sequence[str]) -> list[str]:
    """The lines under the table: the conversion's error, the check against results.json, L0 ranges
    that miss each other, and sae-lens's settings."""
    lines = []
    errors = [r["conversion_error"] for r in rows if r["source"] == "sae-lens"]
    if errors:
        lines.append(f"sae-lens -> our inference form: max |x_hat difference| {max(errors):.2g} C (C: the scale)")
    lines.append(check_against_results(rows, sweep.results))
    for arch in archs:
        theirs = [r["l0"] for r in rows if r["architecture"] == arch and r["source"] == "sae-lens"]
        mine = [r["l0"] for r in rows if r["architecture"] == arch and r["source"] == "jumpscope"]
        if theirs and mine and (max(theirs) < min(mine) or min(theirs) > max(mine)):
            lines.append(f"{arch}: sae-lens's L0 {min(theirs):.1f}-{max(theirs):.1f} misses ours "
                         f"{min(mine):.1f}-{max(mine):.1f}: nothing to match (--saelens-l0-coeff adds other "
                         "c's, --steps more steps)")  # fmt: skip
    for arch in archs:
        settings = next((r["settings"] for r in rows if r["architecture"] == arch and "settings" in r), None)
        if settings:
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items()
                              if k not in ("l0_coefficient", "k"))  # fmt: skip
            lines.append(f"sae-lens {arch} settings (its defaults but the scaling factor): {shown}")
    return lines


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train, evaluate and print; returns the table's rows."""
    from trainer.device import resolve_device

    folder = args.sweep or Path("runs") / ("pareto-quick" if args.quick else "pareto")
    sweep = read_sweep(folder, args.quick)
    cfg = sweep.config
    shards = ShardSource(sweep.activations, loop=True)
    train = sweep_train_config(sweep, shards)
    steps = args.steps or (args.tokens // train.batch_size if args.tokens else train.total_steps)
    device = resolve_device(args.device)
    grid = {arch: [float(v) for v in cfg.grid.get(arch, ())] for arch in ARCHITECTURES}
    grid |= {arch: given for arch, given in (("jumprelu", args.jumprelu), ("topk", args.topk)) if given is not None}
    points = peer_points(grid, shards.d_in, args.arch, args.saelens_l0_coeff)
    print(f"sweep {folder}: {sweep.model} layer {shards.meta.get('layer')} {sweep.site}, d_in {shards.d_in}, "
          f"width {cfg.width}, {shards.n_tokens:,} cached tokens, batch {train.batch_size}, "
          f"seed {train.seed}")  # fmt: skip
    if steps != train.total_steps:
        print(f"note: sae-lens trains {steps} steps here, the sweep's SAEs {train.total_steps}")

    t0 = time.perf_counter()
    data = SweepBatches(shards, train)
    print(f"the sweep's batches: {steps} steps of {train.batch_size}, scale C = {data.scale:.4g} "
          f"(read in {time.perf_counter() - t0:.1f} s); sae-lens sees sqrt({shards.d_in}) * x / C")  # fmt: skip
    out = None if args.no_save else args.out or folder / "peer"
    trained = train_peers(points, data, d_sae=cfg.width, steps=steps, device=device, out=out, retrain=args.retrain)
    scale = data.scale
    del data  # the cache held in memory

    ours = our_saes(sweep, args.arch)
    if args.heldout is not None:
        t0 = time.perf_counter()
        held = HeldOut([take_tokens(ShardSource(args.heldout), cfg.eval_tokens)], device=device)
        held.seconds = time.perf_counter() - t0
    else:
        held = held_out_from_model(sweep, shards, args.device, lm=not args.no_delta_lm)
    saes = {name: sae for name, (_, sae) in ours.items() if sae is not None}
    saes |= {name: t.sae for name, (_, t) in trained.items()}
    metrics, eval_seconds, lm_seconds = measure(saes, held, cfg.lm_tokens, progress=sys.stderr.isatty())
    rows = table_rows(sweep, ours, trained, metrics, train.total_steps)

    lm_note = "with delta LM loss" if any(r.get("delta_lm_loss") is not None for r in rows) else "no delta LM loss"
    where = f"--heldout {args.heldout}" if args.heldout else "the sweep's held-out text"
    print(f"\nheld-out: {sum(c.shape[0] for c in held.activations):,} activations of {where} ({lm_note}); "
          f"held-out read in {held.seconds:.1f} s, metrics {eval_seconds:.1f} s, "
          f"delta LM {lm_seconds:.1f} s")  # fmt: skip
    print("FVU/ours, dLM/ours: a sae-lens SAE's value over ours, JumpReLU's read off our curve at its L0 (linear "
          "in log L0; '-' outside our L0 range), TopK's at the same k; above 1 ours is better\n")  # fmt: skip
    print(table(rows) + "\n")
    gaps = gap_lines(rows)
    if gaps:
        print("\n".join(gaps) + "\n")
    print("\n".join(notes(rows, sweep, args.arch)))
    if args.json is not None:
        doc = {"sweep": str(folder), "steps": steps, "batch_size": train.batch_size, "scale": scale, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return rows


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=None, help="sweep folder (default runs/pareto[-quick])")
    parser.add_argument("--quick", action="store_true", help="the --quick sweep: its folder and QUICK_GRID")
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--jumprelu", type=_floats, default=None, help="lambdas in our units (default: the sweep's)")
    parser.add_argument("--topk", type=_floats, default=None, help="k values (default: the sweep's)")
    parser.add_argument("--saelens-l0-coeff", type=_floats, default=None,
                        help="more sae-lens JumpReLUs at these l0_coefficients of its own (beside d_in x the "
                             "lambdas; --jumprelu '' for only these)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="sae-lens's steps (default: the sweep's)")
    parser.add_argument("--tokens", type=int, default=None, help="sae-lens's training tokens (default: the sweep's)")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="held-out activation shards instead of the sweep's (no model, no delta LM)")  # fmt: skip
    parser.add_argument("--no-delta-lm", action="store_true", help="skip delta LM loss (no spliced passes)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=None, help="where sae-lens's SAEs go (default SWEEP/peer)")
    parser.add_argument("--no-save", action="store_true", help="keep sae-lens's SAEs only in a temporary folder")
    parser.add_argument("--retrain", action="store_true",
                        help="train sae-lens's SAEs again (default: keep OUT's from the same settings)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
