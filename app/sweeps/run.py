"""`jumpscope sweep`: the Fig. 2 comparison end to end, from a model to the /compare page.

Stages, each resumable (run the same command again after an interruption):
1. harvest the training activations once into OUT/activations (bf16 shards);
2. train every point of the grid from that cache into OUT/saes/SLUG (`train_point`: the pipeline's
   train step, app.pipeline.run);
3. evaluate them all on the same held-out activations and predictions;
4. write OUT/results.json, OUT/results.csv and the plots OUT/fvu.svg, OUT/delta_lm_loss.svg;
5. register every SAE (the pipeline's register step) and the sweep (points, budget, plots) in the
   database, in one transaction;
6. with `index_tokens`, index every SAE from the cache of stage 1 (the pipeline's index step, with no
   model pass), so their features can be browsed and rated side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine

from app.catalog.saes import check_name
from app.core.database import session_scope
from app.core.tables import Sweep, SweepPointRow
from app.pipeline.run import TrainingPlan, index_step, register_step, shuffle_tokens, train_step
from app.pipeline.stages import lm_source, metadata_from_shards, write_activation_cache
from app.sweeps.results import PLOTS, plots, results_csv, results_doc
from trainer.data.activations import ShardSource
from trainer.formats.native import SAEMetadata
from trainer.saes.config import SAEConfig
from trainer.sweep.grid import SweepConfig, SweepPoint, evaluate_points
from trainer.training.config import TrainConfig


@dataclass
class SweepOptions:
    """Where a sweep reads its activations and writes its SAEs (the CLI's options)."""

    out: Path
    """Folder for the activation cache, the SAEs, results and plots."""
    name: str = "pareto"
    """The sweep's name in the store; its SAEs are registered as NAME-ARCH-KNOBVALUE."""
    model: str = "gemma3-270m"
    """'gemma3-270m' (packaged), 'tiny-gemma2', a local model folder or a hub id."""
    layer: int | None = None
    """Decoder layer (default: the middle one)."""
    site: str = "resid"
    """resid, mlp or attn."""
    context_size: int | None = None
    """Tokens per sequence (default 128 on CPU, 1024 on GPU)."""
    device: str = "auto"
    """auto = CUDA when present."""
    config: SweepConfig = field(default_factory=SweepConfig)
    """Width, tokens, recipe, seed, evaluation sizes and the grid."""
    index_tokens: int = 0
    """Index every registered SAE on this many tokens of the cache (no model pass; 0: no index)."""

    def __post_init__(self) -> None:
        check_name(self.name)


def point_name(sweep: str, point: SweepPoint) -> str:
    return f"{sweep}-{point.slug}"[:100]


def _check_resume(out: Path, opts: SweepOptions) -> None:
    """A sweep folder holds one configuration: refuse to mix SAEs trained under another."""
    record = {"model": opts.model, "layer": opts.layer, "site": opts.site, "context_size": opts.context_size,
              "config": {k: v for k, v in opts.config.to_json().items() if k != "grid"}}  # fmt: skip
    path = out / "sweep.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != record:
            changed = sorted(k for k in record if before.get(k) != record[k])
            raise ValueError(
                f"{out} holds a sweep with other settings ({', '.join(changed)} differ); use another --out or remove it"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def _timings(out: Path) -> dict[str, float]:
    path = out / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_timings(out: Path, timings: dict[str, float]) -> None:
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


def point_plan(
    point: SweepPoint, cfg: SweepConfig, *, shards: ShardSource, out_dir: Path, meta: SAEMetadata, device: str = "auto"
) -> TrainingPlan:
    """What the pipeline trains for one point: the sweep's shared budget, the point's knob (lambda or
    k) and the named deviations (cfg.overrides, which win over the recipe), on the cache's shards."""
    k = int(point.value) if point.knob == "k" else SAEConfig.k
    sae_names = {f.name for f in fields(SAEConfig)}
    sae_over = {name: v for name, v in cfg.overrides.items() if name in sae_names}
    train_over = {name: v for name, v in cfg.overrides.items() if name not in sae_names}
    sae_cfg = SAEConfig(d_in=shards.d_in, d_sae=cfg.width, architecture=point.architecture, k=k, **sae_over)
    steps_tokens = int(cfg.train_tokens * cfg.epochs) // cfg.batch_size * cfg.batch_size
    train_cfg = TrainConfig(**{
        "tokens": max(cfg.batch_size, steps_tokens), "batch_size": cfg.batch_size, "recipe": cfg.recipe,
        "seed": cfg.seed, "sparsity_coeff": None if point.knob == "k" else point.value,
        "shuffle_buffer": shuffle_tokens(shards.n_tokens, shards.d_in),
        "norm_tokens": min(TrainConfig.norm_tokens, shards.n_tokens),
        "checkpoint_every": 100, "log_every": 10, "device": device, **train_over,
    })  # fmt: skip
    point_meta = replace(meta, extra={**meta.extra, "sweep_point": asdict(point)})
    return TrainingPlan(source=shards, sae=sae_cfg, train=train_cfg, meta=point_meta, out_dir=out_dir,
                        explicit=set(cfg.overrides))  # fmt: skip


def train_point(
    point: SweepPoint,
    cfg: SweepConfig,
    *,
    activations: Path,
    out_dir: Path,
    meta: SAEMetadata,
    device: str = "auto",
    progress: bool = True,
) -> float:
    """Train one point's SAE from the cache into out_dir (resuming a checkpoint); seconds spent.

    A finished SAE (weights present) is left alone and costs nothing.
    """
    shards = ShardSource(activations, loop=True)
    plan = point_plan(point, cfg, shards=shards, out_dir=out_dir, meta=meta, device=device)
    return train_step(plan=plan, reuse=True, progress=progress).seconds


def run_sweep(
    opts: SweepOptions,
    engine: Engine | None,
    data_dir: Path,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the results document also written to OUT/results.json."""
    from trainer.lm.source import lm_batches

    cfg, out = opts.config, opts.out
    _check_resume(out, opts)
    timings = _timings(out)
    acts = out / "activations"
    if not (acts / "meta.json").exists():
        t0 = time.perf_counter()
        lm = lm_source(model=opts.model, layer=opts.layer, site=opts.site, context_size=opts.context_size,
                       device=opts.device, max_tokens=cfg.train_tokens)  # fmt: skip
        log(f"stage 1/4: harvesting {cfg.train_tokens:,} activations of {lm.loaded.name} L{lm.cfg.layer} {opts.site}")
        write_activation_cache(lm, acts, bf16=True)
        timings["harvest"] = time.perf_counter() - t0
        _save_timings(out, timings)
        del lm
    meta = metadata_from_shards(ShardSource(acts))
    if meta.layer is None:
        raise ValueError(f"{acts}/meta.json names no layer: remove {acts} to harvest it again")
    layer = meta.layer
    points = cfg.points()
    dirs = {point_name(opts.name, p): out / "saes" / p.slug for p in points}
    for i, (point, name) in enumerate(zip(points, dirs, strict=True)):
        log(f"stage 2/4: [{i + 1}/{len(points)}] training {point.architecture} {point.knob}={point.value:g}")
        seconds = train_point(point, cfg, activations=acts, out_dir=dirs[name], meta=meta, device=opts.device,
                              progress=progress)  # fmt: skip
        if seconds > 0:
            timings[f"train:{point.slug}"] = seconds
            _save_timings(out, timings)
    log(f"stage 3/4: evaluating {len(points)} SAEs on {cfg.eval_tokens:,} held-out tokens "
        f"and {cfg.lm_tokens:,} held-out predictions")  # fmt: skip
    t0 = time.perf_counter()
    held = lm_source(model=opts.model, layer=layer, site=opts.site, split="heldout", context_size=meta.context_size,
                     device=opts.device, max_tokens=cfg.eval_tokens)  # fmt: skip
    held_out = list(held)
    metrics = evaluate_points(dirs, held_out, model=held.loaded.model, layer=layer, site=opts.site,
                              lm_batches=lm_batches(held), lm_tokens=cfg.lm_tokens, device=held.device,
                              progress=progress)  # fmt: skip
    timings["eval"] = time.perf_counter() - t0
    _save_timings(out, timings)
    rows = [
        {"sweep": opts.name, "sae": name, "architecture": p.architecture, "knob": p.knob, "value": p.value,
         **metrics[name], "train_seconds": timings.get(f"train:{p.slug}", 0.0)}
        for p, name in zip(points, dirs, strict=True)
    ]  # fmt: skip
    doc = results_doc(name=opts.name, model=meta.model, layer=layer, site=opts.site, config=cfg.to_json(),
                      budget=budget(timings, points), rows=rows)  # fmt: skip
    svgs = {metric: str(svg) for metric, svg in plots(doc).items()}
    write_results(out, doc, svgs)
    log(f"stage 4/4: wrote {out}/results.json, results.csv, {', '.join(f'{m}.svg' for m in PLOTS)}")
    if engine is not None:
        store_sweep(engine, doc, dirs=dirs, data_dir=data_dir, svgs=svgs)
        log(f"registered {len(rows)} SAEs and sweep {opts.name!r}: /compare/{opts.name}")
        if opts.index_tokens > 0:
            index_all(engine, list(dirs), acts, tokens=opts.index_tokens, device=opts.device, log=log,
                      progress=progress)  # fmt: skip
    return doc


def index_all(
    engine: Engine,
    names: list[str],
    acts: Path,
    *,
    tokens: int,
    device: str,
    log: Callable[[str], None],
    progress: bool,
) -> None:
    """Index every SAE of the sweep from its activation cache (with the model when the cache is older
    than token rows)."""
    cached = ShardSource(acts).token_rows
    source = "the cache (no model pass)" if cached else "the model (the cache has no token rows)"
    for i, name in enumerate(names):
        log(f"indexing [{i + 1}/{len(names)}] {name} on {tokens:,} tokens from {source}")
        index_step(engine=engine, name=name, tokens=tokens, device=device, progress=progress,
                   activations=acts if cached else None)  # fmt: skip


def budget(timings: dict[str, float], points: list[SweepPoint]) -> dict[str, float]:
    """Seconds per stage: harvest, train (this grid's SAEs), eval, and their total."""
    train = sum(timings.get(f"train:{p.slug}", 0.0) for p in points)
    parts = {"harvest": timings.get("harvest", 0.0), "train": train, "eval": timings.get("eval", 0.0)}
    return {**parts, "total": sum(parts.values())}


def write_results(out: Path, doc: dict[str, Any], svgs: dict[str, str]) -> None:
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "results.csv").write_text(results_csv(doc["points"]))
    for metric, svg in svgs.items():
        (out / f"{metric}.svg").write_text(svg + "\n")


ROW_KEYS = ("sweep", "sae", "architecture", "knob", "value", "train_seconds")
"""Columns of a result row that are not metrics."""


def store_sweep(
    engine: Engine, doc: dict[str, Any], *, dirs: dict[str, Path], data_dir: Path, svgs: dict[str, str]
) -> None:
    """Register every SAE (replacing same-named ones) and the sweep with its points and its plots
    (metric -> SVG, as written beside results.json)."""
    metrics = {row["sae"]: {k: v for k, v in row.items() if k not in ROW_KEYS} for row in doc["points"]}
    with session_scope(engine) as session:
        sae_ids = {}
        for row in doc["points"]:
            sae = register_step(session=session, sae_dir=dirs[row["sae"]], data_dir=data_dir, name=row["sae"],
                                replace=True, metrics=metrics[row["sae"]])  # fmt: skip
            sae_ids[row["sae"]] = sae.id
        session.execute(delete(Sweep).where(Sweep.name == doc["name"]))
        session.flush()
        sweep = Sweep(name=doc["name"], model=doc.get("model"), layer=doc.get("layer"), site=doc.get("site"),
                      config=doc["config"], budget=doc["budget"], plots=svgs)  # fmt: skip
        sweep.points = [
            SweepPointRow(sae_id=sae_ids[row["sae"]], architecture=row["architecture"], knob=row["knob"],
                          value=row["value"], train_seconds=row.get("train_seconds", 0.0),
                          metrics=metrics[row["sae"]])
            for row in doc["points"]
        ]  # fmt: skip
        session.add(sweep)
