"""`jumpscope sweep`: the Fig. 2 comparison end to end, from a model to the /compare page.

Stages, each resumable (run the same command again after an interruption):
1. harvest the training activations once into OUT/activations (bf16 shards);
2. train every point of the grid from that cache into OUT/saes/SLUG (trainer.sweep.grid.train_point);
3. evaluate them all on the same held-out activations and predictions;
4. write OUT/results.json, OUT/results.csv and the plots OUT/fvu.svg, OUT/delta_lm_loss.svg;
5. register every SAE and the sweep (points, budget, plots) in the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine

from app.catalog.saes import check_name, import_sae
from app.core.database import session_scope
from app.core.tables import Sweep, SweepPointRow
from app.pipeline.stages import lm_source, write_activation_cache
from app.sweeps.results import PLOTS, plots, results_csv, results_doc
from trainer.sweep.grid import SweepConfig, SweepPoint, evaluate_points, train_point


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


def run_sweep(
    opts: SweepOptions, engine: Engine | None, data_dir: Path, log: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the results document also written to OUT/results.json."""
    from trainer.formats import SAEMetadata
    from trainer.lm.source import lm_batches

    cfg, out = opts.config, opts.out
    _check_resume(out, opts)
    timings = _timings(out)
    acts = out / "activations"
    if not (acts / "meta.json").exists():
        t0 = time.perf_counter()
        lm = lm_source(opts.model, opts.layer, opts.site, None, "text", "train", opts.context_size, 8, opts.device,
                       cfg.train_tokens)  # fmt: skip
        log(f"stage 1/4: harvesting {cfg.train_tokens:,} activations of {lm.loaded.name} L{lm.cfg.layer} {opts.site}")
        write_activation_cache(lm, acts, bf16=True)
        timings["harvest"] = time.perf_counter() - t0
        _save_timings(out, timings)
        del lm
    shards_meta = json.loads((acts / "meta.json").read_text())
    layer = int(shards_meta["layer"])
    meta = SAEMetadata(model=shards_meta.get("model"), layer=layer, site=opts.site, dataset="packaged",
                       context_size=shards_meta.get("context_size"))  # fmt: skip
    points = cfg.points()
    dirs = {point_name(opts.name, p): out / "saes" / p.slug for p in points}
    for i, (point, name) in enumerate(zip(points, dirs, strict=True)):
        log(f"stage 2/4: [{i + 1}/{len(points)}] training {point.architecture} {point.knob}={point.value:g}")
        seconds = train_point(point, cfg, acts, dirs[name], meta, opts.device, progress)
        if seconds > 0:
            timings[f"train:{point.slug}"] = seconds
            _save_timings(out, timings)
    log(f"stage 3/4: evaluating {len(points)} SAEs on {cfg.eval_tokens:,} held-out tokens "
        f"and {cfg.lm_tokens:,} held-out predictions")  # fmt: skip
    t0 = time.perf_counter()
    held = lm_source(opts.model, layer, opts.site, None, "text", "heldout", meta.context_size, 8, opts.device,
                     cfg.eval_tokens)  # fmt: skip
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
    doc = results_doc(opts.name, meta.model, layer, opts.site, cfg.to_json(), budget(timings, points), rows)
    svgs = {metric: str(svg) for metric, svg in plots(doc).items()}
    write_results(out, doc, svgs)
    log(f"stage 4/4: wrote {out}/results.json, results.csv, {', '.join(f'{m}.svg' for m in PLOTS)}")
    if engine is not None:
        store_sweep(engine, doc, dirs, data_dir, svgs)
        log(f"registered {len(rows)} SAEs and sweep {opts.name!r}: /compare/{opts.name}")
    return doc


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
    engine: Engine, doc: dict[str, Any], dirs: dict[str, Path], data_dir: Path, svgs: dict[str, str]
) -> None:
    """Register every SAE (replacing same-named ones) and the sweep with its points and its plots
    (metric -> SVG, as written beside results.json)."""
    metrics = {row["sae"]: {k: v for k, v in row.items() if k not in ROW_KEYS} for row in doc["points"]}
    with session_scope(engine) as session:
        sae_ids = {}
        for row in doc["points"]:
            sae, _ = import_sae(session, dirs[row["sae"]], data_dir=data_dir, name=row["sae"], replace=True,
                                metrics=metrics[row["sae"]])  # fmt: skip
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
