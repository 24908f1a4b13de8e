"""What a worker does for each kind of job: train (then register, evaluate, index) or index.

A job's files live in `runs_dir/job-ID`; a training job started again after its worker died
resumes from the checkpoint there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.core.database import session_scope
from app.core.settings import Settings
from app.jobs.schemas import IndexJobParams, TrainJobParams


class JobStopped(Exception):
    """The job is no longer this worker's (requeued or cancelled), or the worker is shutting down."""


@dataclass
class Reporter:
    """Progress shared between the job thread and the heartbeat thread."""

    progress: float = 0.0
    message: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def update(self, progress: float | None = None, message: str | None = None) -> None:
        if progress is not None:
            self.progress = progress
        if message is not None:
            self.message = message
        if self.stop.is_set():
            raise JobStopped

    def request_stop(self) -> None:
        self.stop.set()
        for callback in self.on_stop:
            callback()


def _read_metrics(path: Path, every: int = 1) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[::every] if every > 1 else rows


def run_train(engine: Engine, job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter) -> dict[str, Any]:
    """Train (resuming from a checkpoint if one exists), register under params.name, evaluate, maybe index."""
    from app.catalog.saes import RegistryError, import_sae
    from app.features.indexer import IndexOptions, index_sae
    from app.pipeline.stages import evaluate_sae_dir, lm_metadata, lm_source
    from trainer.data.activations import ShardSource
    from trainer.formats import SAEMetadata
    from trainer.training.config import SAEConfig, TrainConfig, resolve_recipe
    from trainer.training.trainer import CHECKPOINT, METRICS, Trainer, TrainingInterrupted

    params = TrainJobParams.model_validate(raw)
    out = settings.runs_dir / f"job-{job_id}"
    out.mkdir(parents=True, exist_ok=True)
    report.update(0.0, "loading")
    if params.activations:
        shards = ShardSource(Path(params.activations), loop=True)
        source: Any = shards
        meta = SAEMetadata(model=shards.meta.get("model"), layer=shards.meta.get("layer"),
                           site=shards.meta.get("site"), dataset=shards.description,
                           context_size=shards.meta.get("context_size"))  # fmt: skip
    else:
        lm = lm_source(params.model, params.layer, params.site, params.dataset, "text", "train", params.context_size,
                       8, settings.device)  # fmt: skip
        lm.cfg.loop = True
        source, meta = lm, lm_metadata(lm)
    coeff = params.l0_coeff if params.architecture == "jumprelu" else params.l1_coeff
    sae_cfg = SAEConfig(d_in=source.d_in, d_sae=params.width, architecture=params.architecture, k=params.k)
    shuffle = 0 if params.activations else 262_144
    train_cfg = TrainConfig(tokens=params.tokens, batch_size=params.batch_size, sparsity_coeff=coeff,
                            recipe=params.recipe, seed=params.seed, device=settings.device,  # type: ignore[arg-type]
                            shuffle_buffer=shuffle, checkpoint_every=params.checkpoint_every, log_every=10)  # fmt: skip
    resolve_recipe(sae_cfg, train_cfg, set())
    total_steps = max(1, params.tokens // params.batch_size)
    metrics_path = out / METRICS

    def on_step(step: int, _sae: Any) -> None:
        report.progress = 0.9 * step / total_steps if params.index_tokens else step / total_steps
        report.message = f"training step {step}/{total_steps}"
        if step % 10 == 0:
            report.metrics = _read_metrics(metrics_path, every=max(1, total_steps // 10 // 500))

    trainer = Trainer(sae_cfg, train_cfg, source, out, meta, progress=False, on_step=on_step)
    report.on_stop.append(trainer.request_stop)
    resumed = (out / CHECKPOINT).exists()
    try:
        trainer.fit(resume=resumed)
    except TrainingInterrupted:
        raise JobStopped from None
    report.metrics = _read_metrics(metrics_path)
    report.update(0.9 if params.index_tokens else 0.95, "evaluating")
    metrics: dict[str, Any] = {}
    if not params.activations:
        metrics = evaluate_sae_dir(out, tokens=50_000, lm_tokens=4_000, device=settings.device)
    with session_scope(engine) as session:
        try:
            import_sae(session, out, data_dir=settings.data_dir, name=params.name, metrics=metrics)
        except RegistryError as err:
            raise RegistryError(f"trained, but could not register: {err}") from None
    result: dict[str, Any] = {"sae": params.name, "resumed": resumed, "metrics": metrics, "out": str(out)}
    if params.index_tokens:
        report.update(0.9, "indexing")

        def progress(done: int, total: int) -> None:
            report.update(0.9 + 0.1 * min(done, total) / total)

        summary = index_sae(engine, params.name, IndexOptions(tokens=params.index_tokens, device=settings.device,
                                                              progress=False), on_progress=progress)  # fmt: skip
        result["indexed_tokens"] = summary.tokens
    return result


def run_index(
    engine: Engine, _job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter
) -> dict[str, Any]:
    from app.features.indexer import IndexOptions, index_sae
    from trainer.analysis.feature_stats import StatsConfig

    params = IndexJobParams.model_validate(raw)
    report.update(0.0, f"indexing {params.sae}")

    def progress(done: int, total: int) -> None:
        report.update(min(done, total) / total, f"indexed {done:,} of {total:,} tokens")

    stats = StatsConfig(top_k=params.top_k, window=params.window, seed=params.seed)
    opts = IndexOptions(tokens=params.tokens, dataset=params.dataset, stats=stats, device=settings.device,
                        progress=False)  # fmt: skip
    try:
        summary = index_sae(engine, params.sae, opts, on_progress=progress)
    except KeyboardInterrupt:
        raise JobStopped from None
    return {"sae": params.sae, "tokens": summary.tokens, "examples": summary.examples, "dead": summary.dead}


RUNNERS: dict[str, Callable[[Engine, int, dict[str, Any], Settings, Reporter], dict[str, Any]]] = {
    "train": run_train,
    "index": run_index,
}
