"""What a worker does for each kind of job: train (then evaluate, register, maybe index), index, or explain.

A job's files live in `runs_dir/job-ID`; a training job started again after its worker died
resumes from the checkpoint there.

Before a runner reads data or allocates an SAE it checks the job again with this worker's own settings
(app.jobs.checks: local data only inside JUMPSCOPE_DATASETS_DIR, tokens and the memory estimate,
now with the real d_in); a job that breaks a rule fails with JobRejected.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from app.core.settings import Settings
from app.jobs import checks
from app.jobs.schemas import ExplainJobParams, IndexJobParams, TrainJobParams


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


def run_train(
    *, engine: Engine, job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter
) -> dict[str, Any]:
    """Train (resuming from a checkpoint if one exists), evaluate, register under params.name, maybe index.

    The pipeline (app.pipeline.run) does the work; its hooks move the progress from 0 to 0.9
    while training (to 1 without indexing), publish the tail of metrics.jsonl, and stop training
    (checkpoint written, JobStopped) when the job is no longer this worker's.
    """
    from app.pipeline.run import SHUFFLE_BUFFER, PipelineHooks, PipelineResult, Stage, TrainingPlan, run_pipeline
    from app.pipeline.stages import lm_metadata, lm_source, metadata_from_shards
    from trainer.data.activations import ActivationSource, ShardSource
    from trainer.formats.native import SAEMetadata
    from trainer.saes import registry as architectures
    from trainer.saes.config import SAEConfig
    from trainer.training.config import TrainConfig
    from trainer.training.trainer import METRICS, TrainingInterrupted

    params = TrainJobParams.model_validate(raw)
    dataset = checks.job_dataset(params.dataset, settings.datasets_dir, at_run=True)
    model = checks.job_model(params.model, settings.datasets_dir, at_run=True)
    activations = (
        checks.local_path(params.activations, settings.datasets_dir, "activations") if params.activations else None
    )
    checks.check_tokens(settings, tokens=params.tokens, index_tokens=params.index_tokens)
    checks.check_train_memory(settings, width=params.width, batch_size=params.batch_size,
                              index_tokens=params.index_tokens)  # fmt: skip
    out = settings.runs_dir / f"job-{job_id}"
    out.mkdir(parents=True, exist_ok=True)
    report.update(0.0, "loading")
    source: ActivationSource
    meta: SAEMetadata
    if activations is not None:
        shards = ShardSource(activations, loop=True)
        source, meta = shards, metadata_from_shards(shards)
    else:
        lm = lm_source(model=model, layer=params.layer, site=params.site, dataset=dataset,
                       context_size=params.context_size, device=settings.device, loop=True)  # fmt: skip
        source, meta = lm, lm_metadata(lm)
    shuffle = 0 if activations is not None else SHUFFLE_BUFFER
    checks.check_train_memory(settings, width=params.width, batch_size=params.batch_size,
                              index_tokens=params.index_tokens, d_in=source.d_in, buffer_tokens=shuffle)  # fmt: skip
    coeff = params.l0_coeff if architectures.get(params.architecture).penalty == "l0" else params.l1_coeff
    sae_cfg = SAEConfig(d_in=source.d_in, d_sae=params.width, architecture=params.architecture, k=params.k)
    train_cfg = TrainConfig(tokens=params.tokens, batch_size=params.batch_size, sparsity_coeff=coeff,
                            recipe=params.recipe, seed=params.seed, device=settings.device,  # type: ignore[arg-type]
                            shuffle_buffer=shuffle, checkpoint_every=params.checkpoint_every, log_every=10)  # fmt: skip
    total_steps = max(1, params.tokens // params.batch_size)
    metrics_path = out / METRICS

    def on_step(step: int) -> None:
        report.progress = 0.9 * step / total_steps if params.index_tokens else step / total_steps
        report.message = f"training step {step}/{total_steps}"
        if step % 10 == 0:
            report.metrics = _read_metrics(metrics_path, every=max(1, total_steps // 10 // 500))

    def on_stage(stage: Stage, *, skip: bool, run: PipelineResult) -> None:
        if stage is Stage.EVALUATE:  # training is done (a job trained on a cache skips the evaluation)
            report.metrics = _read_metrics(metrics_path)
            report.update(0.9 if params.index_tokens else 0.95, "evaluating")
        elif stage is Stage.INDEX and not skip:
            report.update(0.9, "indexing")

    def on_index_progress(done: int, total: int) -> None:
        report.update(0.9 + 0.1 * min(done, total) / total)

    plan = TrainingPlan(source=source, sae=sae_cfg, train=train_cfg, meta=meta, out_dir=out)
    hooks = PipelineHooks(on_stage=on_stage, on_step=on_step, stoppable=report.on_stop.append,
                          on_index_progress=on_index_progress)  # fmt: skip
    try:
        run = run_pipeline(plan=plan, engine=engine, data_dir=settings.data_dir, name=params.name,
                           evaluate=not params.activations, index_tokens=params.index_tokens, hooks=hooks)  # fmt: skip
    except TrainingInterrupted:
        raise JobStopped from None
    result: dict[str, Any] = {"sae": params.name, "resumed": run.resumed, "metrics": run.metrics, "out": str(out)}
    if run.indexed_tokens is not None:
        result["indexed_tokens"] = run.indexed_tokens
    return result


def run_index(
    *, engine: Engine, job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter
) -> dict[str, Any]:
    """Index a registered SAE (its progress is the share of tokens streamed); Ctrl-C or a stop is JobStopped."""
    from app.catalog.saes import get_sae
    from app.core.database import session_scope
    from app.features.indexer import IndexOptions, index_sae
    from trainer.analysis.feature_stats import StatsConfig

    params = IndexJobParams.model_validate(raw)
    dataset = checks.job_dataset(params.dataset, settings.datasets_dir, at_run=True)
    checks.check_tokens(settings, tokens=params.tokens)
    with session_scope(engine) as session:
        sae = get_sae(session, params.sae)
        d_in, d_sae, recorded = sae.d_in, sae.d_sae, sae.dataset
    if dataset is None and recorded not in (None, checks.PACKAGED):
        # The indexer would read the SAE's own training dataset: the same rule applies to it (its
        # metadata may come from a cache's meta.json that anyone who can write a cache chose).
        try:
            dataset = checks.job_dataset(recorded, settings.datasets_dir, at_run=True)
        except checks.JobRejected as err:
            raise checks.JobRejected(
                f"this SAE's own dataset (recorded when it was trained) may not be read by a job: {err}; "
                "give the job a dataset"
            ) from None
    needed = checks.index_memory(d_in, d_sae, params.top_k, params.window)
    checks.check_memory(needed, settings, "indexing this SAE", "top_k or window")
    report.update(0.0, f"indexing {params.sae}")

    def progress(done: int, total: int) -> None:
        report.update(min(done, total) / total, f"indexed {done:,} of {total:,} tokens")

    stats = StatsConfig(top_k=params.top_k, window=params.window, seed=params.seed)
    opts = IndexOptions(tokens=params.tokens, dataset=dataset, stats=stats, device=settings.device,
                        progress=False)  # fmt: skip
    try:
        summary = index_sae(engine, params.sae, opts, on_progress=progress)
    except KeyboardInterrupt:
        raise JobStopped from None
    return {"sae": params.sae, "tokens": summary.tokens, "examples": summary.examples, "dead": summary.dead}


def run_explain(
    *, engine: Engine, job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter
) -> dict[str, Any]:
    """Explain and score features of a registered SAE (and of its random baseline); progress is the share of
    features done (the baseline's index and features take the second half). A stop is JobStopped; what is
    done stays stored, and the job run again skips it."""
    from app.catalog.saes import get_sae
    from app.core.database import session_scope
    from app.interp.llm.factory import backend_from_spec
    from app.interp.pipeline import ExplainSummary, explain_sae

    params = ExplainJobParams.model_validate(raw)
    llm = checks.job_llm(params.llm, settings, at_run=True)
    with session_scope(engine) as session:
        sae = get_sae(session, params.sae)
        if sae.index_run is None:
            raise checks.JobRejected(f"params.sae: {params.sae!r} is not indexed yet: index it first (an index job)")
        checks.check_explain_features(params.features, sae.d_sae)
        if params.baseline is not None:
            run = sae.index_run
            checks.check_baseline_index(run_dataset=run.dataset, run_params=run.params or {}, run_tokens=run.tokens,
                                        d_in=sae.d_in, d_sae=sae.d_sae, settings=settings, at_run=True)  # fmt: skip
    report.update(0.0, f"loading the LLM for {params.sae}")
    backend = backend_from_spec(llm, model=params.llm_model, settings=settings)
    share = 0.5 if params.baseline is not None else 1.0

    def progress(stage: str, done: int, total: int) -> None:
        part = min(done, total) / max(total, 1)
        if stage.startswith("index "):
            report.update(share + 0.1 * part, f"{stage}: {done:,} of {total:,} tokens")
        elif stage == f"explain {params.sae}":
            report.update(share * part, f"{stage}: {done} of {total} features")
        else:
            report.update(0.6 + 0.4 * part, f"{stage}: {done} of {total} features")

    try:
        summary = explain_sae(engine, params.sae, backend=backend, features=params.features, sample=params.sample,
                              seed=params.seed, baseline=params.baseline, progress=progress,
                              data_dir=settings.data_dir, device=settings.device)  # fmt: skip
    except KeyboardInterrupt:
        raise JobStopped from None

    def result(s: ExplainSummary) -> dict[str, Any]:
        return {"sae": s.name, "llm": s.llm, "prompt_version": s.prompt_version, "features": len(s.features),
                "skipped": s.skipped, "ok": s.ok, "failed": s.failed, "errors": s.errors,
                "per_minute": round(s.per_minute, 3), "means": {k: s.mean(k) for k in s.scores}}  # fmt: skip

    out = result(summary)
    if summary.baseline is not None:
        out["baseline"] = result(summary.baseline)
    return out


class Runner(Protocol):
    """Runs one job of a kind: its raw params in, its result document out (JobStopped when stopped)."""

    def __call__(
        self, *, engine: Engine, job_id: int, raw: dict[str, Any], settings: Settings, report: Reporter
    ) -> dict[str, Any]: ...


RUNNERS: dict[str, Runner] = {
    "train": run_train,
    "index": run_index,
    "explain": run_explain,
}
