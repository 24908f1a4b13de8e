"""One SAE from activations to the browser: train -> evaluate -> register -> index.

Every caller that takes an SAE through these steps goes through this module:

- `jumpscope demo` (app.pipeline.cli): `run_pipeline` with `reuse=True`, so that each finished
  stage is kept in its folder and a second run skips it;
- the worker's train job (app.jobs.runners.run_train): `run_pipeline` with hooks that report
  progress, publish the training metrics and stop training when the job is no longer the worker's;
- `jumpscope sweep` (app.sweeps.run): `train_step` for every SAE of the grid, and `register_step`
  for all of them in the transaction that stores the sweep (it evaluates them together itself,
  with paired delta LM losses);
- `jumpscope train` (app.pipeline.cli): `train_step` alone.

Each step is a keyword-only function that can be called on its own. Errors are the steps' own:
ValueError subclasses naming the problem (a bad config, unreadable activations, a name already
taken), OSError, and `TrainingInterrupted` when training was asked to stop: a checkpoint was
written and the same call again resumes from it. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.pipeline.stages import evaluate_sae_dir

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from app.core.tables import SAERow
    from app.features.indexer import IndexSummary
    from trainer.data.activations import ActivationSource
    from trainer.formats.native import SAEMetadata
    from trainer.saes.config import SAEConfig
    from trainer.training.config import TrainConfig

SHUFFLE_BUFFER = 262_144
"""Tokens in the shuffle buffer when training on live model activations, whose consecutive tokens
(one document) are strongly correlated, and on the caches the demo and the sweep harvest in
document order (the sweep caps it at the cache's size). Activations a user hands in
(`train --activations`, a job's `activations`) are read in their order unless asked otherwise."""

IN_MEMORY_BYTES = 4 << 30
"""A harvested cache whose activations take at most this much memory as float32 trains from memory,
each epoch a fresh permutation of the whole cache (trainer.data.activations.EpochShuffle): a better
shuffle than the buffer's, and no per-step re-reading and re-shuffling of the shards."""


def shuffle_tokens(n_tokens: int, d_in: int) -> int:
    """The shuffle buffer for training on a harvested cache of n_tokens x d_in: the whole cache when it
    fits in IN_MEMORY_BYTES (epoch shuffles from memory), else SHUFFLE_BUFFER."""
    return n_tokens if n_tokens * d_in * 4 <= IN_MEMORY_BYTES else SHUFFLE_BUFFER


EVAL_TOKENS = 50_000
"""Held-out activations the pipeline measures l0, fvu, mse and the dead and dense fractions on."""

EVAL_LM_TOKENS = 4_000
"""Held-out next-token predictions the pipeline measures delta LM loss on."""

EVAL_FILE = "eval.json"
"""The evaluation's metrics, written beside the SAE they measure when a run keeps its stages."""


class Stage(StrEnum):
    """The pipeline's steps, in the order `run_pipeline` takes them."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    REGISTER = "register"
    INDEX = "index"


@dataclass
class TrainingPlan:
    """What to train, on which activations, and where: the train step's input."""

    source: ActivationSource
    """The activations: a live model (stages.lm_source), a cache's shards, synthetic data."""
    sae: SAEConfig
    train: TrainConfig
    meta: SAEMetadata
    """The cfg.json fields saying where the activations came from (stages.lm_metadata,
    stages.metadata_from_shards)."""
    out_dir: Path
    """The native SAE folder; metrics.jsonl and checkpoint.pt are written beside the weights."""
    explicit: set[str] = field(default_factory=set)
    """Config fields the caller set on purpose: the recipe (resolve_recipe) leaves them alone."""


@dataclass(frozen=True)
class TrainOutcome:
    """What the train step did."""

    trained: bool
    """False when finished weights were found and kept (`reuse`)."""
    resumed: bool
    """Training continued from a checkpoint."""
    steps: int
    """Optimiser steps the SAE has taken in all (0 when nothing was trained)."""
    seconds: float
    """Wall time this call spent (0.0 when nothing was trained)."""


@dataclass
class PipelineResult:
    """What `run_pipeline` did; its hooks see it filled in stage by stage."""

    out_dir: Path
    """The native SAE folder (TrainingPlan.out_dir)."""
    trained: bool = False
    """Training ran in this call (otherwise its weights were kept from an earlier run)."""
    resumed: bool = False
    """Training continued from a checkpoint."""
    steps: int = 0
    """Optimiser steps of this call's training in all (0 when nothing was trained)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The evaluation's metrics (empty when there was none)."""
    name: str | None = None
    """The SAE's name in the store (known from the register stage on)."""
    indexed_tokens: int | None = None
    """Tokens the index step streamed (None when it did not run)."""


class StageHook(Protocol):
    """Called as each stage begins: `skip` says it does nothing this time, `run` what is known so far."""

    def __call__(self, stage: Stage, *, skip: bool, run: PipelineResult) -> None: ...


@dataclass
class PipelineHooks:
    """How a caller follows and steers `run_pipeline`; every hook is optional."""

    on_stage: StageHook | None = None
    """Called as each stage begins, also when it does nothing this time (skip=True): its result is
    kept from an earlier run (`reuse`), or it is switched off (`evaluate=False`, `index_tokens=0`)."""
    on_step: Callable[[int], None] | None = None
    """Called after every optimiser step with the steps done so far."""
    stoppable: Callable[[Callable[[], None]], None] | None = None
    """Given, once training starts, a function that stops it at the next step (from any thread):
    a checkpoint is written and `TrainingInterrupted` raised."""
    on_index_progress: Callable[[int, int], None] | None = None
    """Called with (tokens done, tokens in all) as the index step streams."""


def has_weights(out_dir: Path) -> bool:
    """Whether out_dir holds a finished SAE (training writes the weights last)."""
    from trainer.formats.files import NATIVE_WEIGHTS

    return (out_dir / NATIVE_WEIGHTS).exists()


def train_step(
    *,
    plan: TrainingPlan,
    resume: bool | None = None,
    reuse: bool = False,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    stoppable: Callable[[Callable[[], None]], None] | None = None,
) -> TrainOutcome:
    """Train the plan's SAE into plan.out_dir (the plan's configs get the recipe's values first).

    resume: None continues from out_dir/checkpoint.pt when there is one, True requires one
    (FileNotFoundError without), False starts over. reuse: finished weights in out_dir are kept
    and nothing is trained. progress: a progress bar on stderr. on_step and stoppable: as in
    `PipelineHooks`.
    """
    from trainer.training.config import resolve_recipe
    from trainer.training.trainer import CHECKPOINT, Trainer

    if reuse and has_weights(plan.out_dir):
        return TrainOutcome(trained=False, resumed=False, steps=0, seconds=0.0)
    started = time.perf_counter()
    resumed = (plan.out_dir / CHECKPOINT).exists() if resume is None else resume
    resolve_recipe(plan.sae, plan.train, plan.explicit)

    def step_done(step: int, _sae: object) -> None:
        if on_step is not None:
            on_step(step)

    trainer = Trainer(plan.sae, plan.train, plan.source, plan.out_dir, meta=plan.meta, progress=progress,
                      on_step=step_done if on_step is not None else None)  # fmt: skip
    if stoppable is not None:
        stoppable(trainer.request_stop)
    result = trainer.fit(resume=resumed)
    return TrainOutcome(trained=True, resumed=resumed, steps=result.steps, seconds=time.perf_counter() - started)


def evaluate_step(
    *,
    sae_dir: Path,
    device: str = "auto",
    tokens: int = EVAL_TOKENS,
    lm_tokens: int = EVAL_LM_TOKENS,
    progress: bool = False,
    save: bool = False,
    activations: Path | None = None,
) -> dict[str, Any]:
    """The SAE's metrics on held-out text of its own model (stages.evaluate_sae_dir): l0, fvu, mse,
    dead and dense fractions (on the held-out shards at `activations` when given, else on the model's
    activations), delta LM loss. With save they are also written to sae_dir/eval.json."""
    metrics = evaluate_sae_dir(sae_dir, tokens=tokens, lm_tokens=lm_tokens, device=device, progress=progress,
                               activations=activations)  # fmt: skip
    if save:
        (sae_dir / EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def saved_evaluation(sae_dir: Path) -> dict[str, Any] | None:
    """The metrics an earlier `evaluate_step(save=True)` wrote beside the SAE, if any."""
    path = sae_dir / EVAL_FILE
    return json.loads(path.read_text()) if path.exists() else None


def register_step(
    *,
    session: Session,
    sae_dir: Path,
    data_dir: Path,
    name: str | None = None,
    replace: bool = False,
    metrics: dict[str, Any] | None = None,
) -> SAERow:
    """Import the native SAE at sae_dir into the store (its weights copied under data_dir).

    name: None derives one from the SAE (catalog.saes.default_name). replace: an SAE of that name
    is replaced (its index is dropped, its ratings kept); otherwise a taken name is a
    RegistryError. The caller commits, so several SAEs can be registered in one transaction.
    """
    from app.catalog.saes import import_sae

    row, _ = import_sae(session, sae_dir, data_dir=data_dir, name=name, replace=replace, metrics=metrics)
    return row


def index_step(
    *,
    engine: Engine,
    name: str,
    tokens: int,
    device: str = "auto",
    progress: bool = False,
    activations: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IndexSummary:
    """Index the registered SAE `name` on `tokens` tokens of the packaged corpus (or its own
    dataset), or, with `activations`, of that harvest's cache with no model pass;
    on_progress(tokens done, tokens in all) as it streams."""
    from app.features.indexer import IndexOptions, index_sae

    opts = IndexOptions(tokens=tokens, device=device, progress=progress, activations=activations)
    return index_sae(engine, name, opts, on_progress=on_progress)


def is_indexed(engine: Engine, name: str) -> bool:
    """Whether `name` is registered and has a complete index of at least one token."""
    from sqlalchemy import select

    from app.core.database import session_scope
    from app.core.tables import SAERow

    with session_scope(engine) as session:
        row = session.scalar(select(SAERow).where(SAERow.name == name))
        return row is not None and row.index_run_id is not None and row.indexed_tokens >= 1


def run_pipeline(
    *,
    plan: TrainingPlan,
    engine: Engine,
    data_dir: Path,
    name: str | None = None,
    replace: bool = False,
    evaluate: bool = True,
    index_tokens: int = 0,
    index_activations: Path | None = None,
    eval_activations: Path | None = None,
    reuse: bool = False,
    retrain: bool = False,
    progress: bool = False,
    hooks: PipelineHooks | None = None,
) -> PipelineResult:
    """Train, evaluate, register and index one SAE; every step runs on plan.train.device.

    name and replace: as in `register_step`. evaluate: measure the SAE (EVAL_TOKENS,
    EVAL_LM_TOKENS) and store the metrics with it. index_tokens: index it afterwards (0: no),
    from the harvest at index_activations when given (no model pass; `index_step`). eval_activations:
    held-out shards the evaluation measures l0, fvu, dead and dense on (the model then runs only for
    delta LM loss).
    reuse: keep each finished stage and skip it next time: weights in out_dir skip training,
    out_dir/eval.json (written by the evaluation) skips evaluating, and an SAE of this name that
    is already indexed skips registering and indexing, unless this call trained. retrain: train
    from scratch even over finished weights or a checkpoint. progress: progress bars on stderr
    (the evaluation's only on a terminal). A registration that fails after this call trained says so.
    """
    from app.catalog.saes import RegistryError, default_name
    from app.core.database import session_scope
    from trainer.formats.native import load_native

    hooks = hooks or PipelineHooks()
    out, device = plan.out_dir, plan.train.device
    run = PipelineResult(out_dir=out)

    def begin(stage: Stage, skip: bool) -> None:
        if hooks.on_stage is not None:
            hooks.on_stage(stage, skip=skip, run=run)

    keep_weights = reuse and not retrain
    begin(Stage.TRAIN, keep_weights and has_weights(out))
    trained = train_step(plan=plan, resume=False if retrain else None, reuse=keep_weights, progress=progress,
                         on_step=hooks.on_step, stoppable=hooks.stoppable)  # fmt: skip
    run.trained, run.resumed, run.steps = trained.trained, trained.resumed, trained.steps

    if reuse and run.trained:
        (out / EVAL_FILE).unlink(missing_ok=True)  # it measured the weights just replaced
    saved = saved_evaluation(out) if reuse and evaluate else None
    begin(Stage.EVALUATE, not evaluate or saved is not None)
    if saved is not None:
        run.metrics = saved
    elif evaluate:
        run.metrics = evaluate_step(sae_dir=out, device=device, progress=progress and sys.stderr.isatty(), save=reuse,
                                    activations=eval_activations)  # fmt: skip

    if name is None:
        loaded = load_native(out)
        name = default_name(loaded.meta, loaded.sae.cfg.architecture, loaded.sae.cfg.d_sae)
    run.name = name
    done = reuse and not run.trained and index_tokens > 0 and is_indexed(engine, name)
    begin(Stage.REGISTER, done)
    if not done:
        try:
            with session_scope(engine) as session:
                register_step(session=session, sae_dir=out, data_dir=data_dir, name=name, replace=replace,
                              metrics=run.metrics)  # fmt: skip
        except RegistryError as err:
            if not run.trained:
                raise
            raise RegistryError(f"trained, but could not register: {err}") from None

    begin(Stage.INDEX, done or index_tokens <= 0)
    if not done and index_tokens > 0:
        summary = index_step(engine=engine, name=name, tokens=index_tokens, device=device, progress=progress,
                             activations=index_activations, on_progress=hooks.on_index_progress)  # fmt: skip
        run.indexed_tokens = summary.tokens
    return run
