"""`jumpscope explain NAME`: explain a chosen or sampled set of features and score each explanation.

For each feature, from the SAE's current index run (app.interp.store):
1. the explaining LLM reads some of its shown examples (top examples, then band samples) and answers with an
   explanation (app.interp.explainer); an answer with no usable explanation is a failed attempt, stored with
   its raw text;
2. the explanation is scored on held-out examples only, which the explainer never saw: held-out top and band
   examples and windows where the feature does not fire: simulation, detection and fuzzing
   (app.interp.scoring);
3. the explanation and its scores are stored in one transaction, before the next feature starts, so an
   interrupted run keeps every feature it finished and a rerun skips them (same LLM and prompt version).

When the LLM gives no answer (LLMError: unreachable, timed out, refused) the attempt is stored with status
`error` (a rerun tries it again) and the run goes on; after `ExplainOptions.max_consecutive_errors` of them
in a row the endpoint is taken to be down and the run stops with `LLMUnavailable`, which says what is stored.

`--baseline random` (app.interp.baseline) does all of this again on a randomly initialised SAE of the same
shape, indexed like the SAE (the paper's baseline, jumprelu.md §5).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, select

from app.catalog.saes import RegistryError, get_sae
from app.catalog.vocab import vocab_for
from app.core.database import session_scope
from app.core.tables import SCORE_KINDS, ExplanationStatus, Feature, ScoreKind
from app.interp.examples import Context
from app.interp.explainer import PROMPT_VERSION, explain
from app.interp.llm.base import ChatBackend, LLMError
from app.interp.scoring.result import ScoreResult
from app.interp.store import (
    BandContext,
    ContextWindow,
    ScoreRecord,
    context_windows,
    example_contexts,
    explained_features,
    non_activating_contexts,
    save_explanation,
    score_record,
)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): stage is 'explain NAME' or 'index NAME-random'; done and total count features
(explain) or tokens (index)."""


class ExplainError(RegistryError):
    """A request `explain_sae` cannot honour (no index, a feature out of range, ...): a one-line message."""


class LLMUnavailable(LLMError):
    """The LLM failed on several features in a row: the run stopped; what it finished is stored."""

    def __init__(self, message: str, summary: ExplainSummary) -> None:
        super().__init__(message)
        self.summary = summary
        """What the run did before it stopped."""


@dataclass
class ExplainOptions:
    """How many examples the explainer reads and the scores are computed on, and the run's limits."""

    shown_top: int = 15
    """Shown top examples the explaining LLM reads (the strongest first)."""
    shown_band: int = 5
    """Shown band samples it reads besides, one per band from the highest band down, then round again."""
    score_top: int = 10
    """Held-out top examples the scores read (at most: the index keeps `StatsConfig.heldout_top`)."""
    score_band: int = 10
    """Held-out band samples the scores read (at most: the index keeps `heldout_band` per band)."""
    score_non_activating: int = 20
    """Random context windows where the feature does not fire that the scores read (true activation 0)."""
    context_before: int = 24
    """Tokens kept before an example's max token (most features depend on what precedes it)."""
    context_after: int = 8
    """Tokens kept after it; a non-activating window keeps its middle before + after + 1 tokens."""
    scores: tuple[ScoreKind, ...] = ("simulation", "detection", "fuzzing")
    """Which scores to compute."""
    retry_failed: bool = False
    """Explain again the features whose earlier answer held no explanation (status failed)."""
    max_consecutive_errors: int = 3
    """LLM errors on this many features in a row (in the order they finish) stop the run (LLMUnavailable)."""
    features_in_flight: int | None = None
    """Features explained and scored at once. None: the backend's `concurrency` (an OpenAI-compatible
    endpoint's requests in flight, so that it stays busy between one feature's phases; 1 for an
    in-process model, which answers one request at a time anyway)."""

    def __post_init__(self) -> None:
        for name in ("shown_top", "shown_band", "score_top", "score_band", "score_non_activating", "context_before",
                     "context_after"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or more, got {getattr(self, name)}")
        if self.shown_top + self.shown_band < 1:
            raise ValueError("shown_top + shown_band must be at least 1: the explainer needs an example")
        if self.max_consecutive_errors < 1:
            raise ValueError(f"max_consecutive_errors must be at least 1, got {self.max_consecutive_errors}")
        if self.features_in_flight is not None and self.features_in_flight < 1:
            raise ValueError(f"features_in_flight must be at least 1, got {self.features_in_flight}")
        unknown = [k for k in self.scores if k not in SCORE_KINDS]
        if unknown:
            raise ValueError(f"scores: unknown {', '.join(unknown)} (known: {', '.join(SCORE_KINDS)})")


@dataclass
class ExplainSummary:
    """What one run did on one SAE."""

    name: str
    llm: str
    prompt_version: str
    run_id: int
    """The index run the examples came from."""
    features: list[int]
    """The features chosen (explicit or sampled), ascending."""
    skipped: int = 0
    """Chosen features already explained by this LLM and prompt version (not redone)."""
    ok: int = 0
    failed: int = 0
    """Answers that held no explanation."""
    errors: int = 0
    """Attempts the LLM gave no answer to."""
    seconds: float = 0.0
    """Wall time of this run's features, from the first start to the last finish (they may overlap)."""
    scores: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in SCORE_KINDS})
    """The defined scores computed in this run, per kind."""
    baseline: ExplainSummary | None = None
    """The same for the random-init baseline (`baseline="random"`)."""

    @property
    def done(self) -> int:
        """Features explained or attempted in this run."""
        return self.ok + self.failed + self.errors

    @property
    def per_minute(self) -> float:
        """Features done per minute of this run."""
        return 60.0 * self.done / self.seconds if self.seconds > 0 else 0.0

    def mean(self, kind: str) -> float | None:
        """Mean of this run's defined `kind` scores (None when there is none)."""
        values = self.scores.get(kind, [])
        return sum(values) / len(values) if values else None


def choose_features(
    engine: Engine, name: str, *, features: Sequence[int] | None = None, sample: int | None = None, seed: int = 0
) -> tuple[int, list[int]]:
    """(index run id, features): `features` checked against the SAE's width, or a `sample` of its live
    features (fired at least once in the index) drawn with `seed`; ascending, without repeats."""
    if (features is None) == (sample is None):
        raise ExplainError("give either features (e.g. --features 1,2,3) or a sample size (--sample N)")
    with session_scope(engine) as session:
        sae = get_sae(session, name)
        if sae.index_run_id is None:
            raise ExplainError(f"SAE {name!r} is not indexed yet: run `jumpscope index {name}` first")
        run_id = sae.index_run_id
        if features is not None:
            bad = [f for f in features if not 0 <= f < sae.d_sae]
            if bad:
                raise ExplainError(f"SAE {name!r} has features 0 to {sae.d_sae - 1}; there is no feature {bad[0]}")
            if not features:
                raise ExplainError("--features is empty: name at least one feature")
            return run_id, sorted(set(features))
        assert sample is not None
        if sample < 1:
            raise ExplainError(f"--sample must be at least 1, got {sample}")
        live = list(
            session.scalars(
                select(Feature.index).where(Feature.run_id == run_id, Feature.fire_count > 0).order_by(Feature.index)
            )
        )
    return run_id, sorted(random.Random(seed).sample(live, min(sample, len(live))))


def _trim(context: Context, opts: ExplainOptions) -> Context:
    """The window around the max token (activating) or the middle of the window (non-activating)."""
    if context.is_activating:
        return context.around_max(before=opts.context_before, after=opts.context_after)
    length = opts.context_before + opts.context_after + 1
    start = max(0, (len(context.tokens) - length) // 2)
    return Context(context.tokens[start : start + length], context.values[start : start + length], context.example_id)


def shown_selection(examples: Sequence[BandContext], opts: ExplainOptions) -> list[Context]:
    """What the explainer reads: `shown_top` top examples, then `shown_band` band samples taken one per band
    from the highest band down, round after round (`examples` in `example_contexts` order)."""
    top = [e.context for e in examples if e.band < 0][: opts.shown_top]
    by_band: dict[int, list[Context]] = {}
    for e in examples:
        if e.band >= 0:
            by_band.setdefault(e.band, []).append(e.context)
    bands: list[Context] = []
    queues = [by_band[b] for b in sorted(by_band, reverse=True)]
    while len(bands) < opts.shown_band and any(queues):
        for queue in queues:
            if queue and len(bands) < opts.shown_band:
                bands.append(queue.pop(0))
    return [_trim(c, opts) for c in top + bands]


def scored_selection(heldout: Sequence[BandContext], silent: Sequence[Context], opts: ExplainOptions) -> list[Context]:
    """What the scores read: held-out top and band examples and non-activating windows, trimmed."""
    top = [e.context for e in heldout if e.band < 0][: opts.score_top]
    band = [e.context for e in heldout if e.band >= 0][: opts.score_band]
    return [_trim(c, opts) for c in top + band + list(silent)]


@dataclass
class _Run:
    """One SAE's run: what every feature of it shares."""

    engine: Engine
    backend: ChatBackend
    opts: ExplainOptions
    seed: int
    sae_id: int
    vocab: tuple[str, ...]
    windows: list[ContextWindow]
    summary: ExplainSummary


async def _score(run: _Run, text: str, contexts: list[Context]) -> list[ScoreRecord]:
    """Every asked-for score of `text` on `contexts` (LLMError propagates)."""
    from app.interp.scoring.detection import score_detection
    from app.interp.scoring.fuzzing import score_fuzzing
    from app.interp.scoring.simulation import score_simulation

    records = []
    for kind in run.opts.scores:
        result: ScoreResult
        if kind == "simulation":
            result = await score_simulation(run.backend, text, contexts, rng_seed=run.seed)
        elif kind == "detection":
            result = await score_detection(run.backend, text, contexts, rng_seed=run.seed)
        else:
            result = await score_fuzzing(run.backend, text, contexts, rng_seed=run.seed)
        records.append(score_record(result))
    return records


async def _explain_feature(run: _Run, feature: int) -> ExplanationStatus:
    """Explain and score one feature and store the attempt; its status."""
    summary, opts = run.summary, run.opts
    start = time.perf_counter()
    with session_scope(run.engine) as session:
        row = session.get(Feature, (summary.run_id, feature))
        max_value = row.max_activation if row is not None else None
        shown = shown_selection(
            example_contexts(session, run_id=summary.run_id, feature_index=feature, split="shown", vocab=run.vocab),
            opts,
        )
        heldout = example_contexts(
            session, run_id=summary.run_id, feature_index=feature, split="heldout", vocab=run.vocab
        )
    silent = non_activating_contexts(run.windows, feature_index=feature, n=opts.score_non_activating,
                                     vocab=run.vocab, rng_seed=run.seed)  # fmt: skip
    scored = scored_selection(heldout, silent, opts)
    status: ExplanationStatus
    text: str | None = None
    raw, error = "", None
    shown_ids: tuple[int | None, ...] = tuple(c.example_id for c in shown if c.is_activating)
    records: list[ScoreRecord] = []
    try:
        if not any(c.is_activating for c in shown):
            status, error = "failed", "no activating example to explain from (a dead feature?)"
        else:
            result = await explain(run.backend, shown, max_value=max_value)
            text, raw, error, shown_ids = result.text, result.raw, result.error, result.example_ids
            status = "ok" if text is not None else "failed"
            if text is not None:
                records = await _score(run, text, scored)
    except LLMError as err:
        status, error = "error", str(err)
    seconds = time.perf_counter() - start
    with session_scope(run.engine) as session:
        save_explanation(
            session, sae_id=run.sae_id, run_id=summary.run_id, feature_index=feature, llm=run.backend.name,
            prompt_version=PROMPT_VERSION, status=status, text=text, raw=raw, error=error, shown_ids=shown_ids,
            seconds=seconds, scores=records if status == "ok" else (),
        )  # fmt: skip
    if status == "ok":
        summary.ok += 1
        for r in records:
            if r.score is not None:
                summary.scores[r.kind].append(r.score)
    elif status == "failed":
        summary.failed += 1
    else:
        summary.errors += 1
        log.warning("feature %d of %s: the LLM gave no answer: %s", feature, summary.name, error)
    return status


async def _explain_all(
    engine: Engine, name: str, *, run_id: int, features: list[int], backend: ChatBackend, opts: ExplainOptions,
    seed: int, progress: Progress | None,
) -> ExplainSummary:  # fmt: skip
    with session_scope(engine) as session:
        sae = get_sae(session, name)
        if sae.index_run_id != run_id:  # a re-index finished since the features were chosen: use the new one
            run_id = sae.index_run_id if sae.index_run_id is not None else run_id
        vocab = vocab_for(engine, sae.model) if sae.model is not None else ()
        done = explained_features(session, sae_id=sae.id, llm=backend.name, prompt_version=PROMPT_VERSION,
                                  retry_failed=opts.retry_failed)  # fmt: skip
        windows = context_windows(session, run_id=run_id)
        sae_id = sae.id
    summary = ExplainSummary(name, backend.name, PROMPT_VERSION, run_id, features)
    todo = [f for f in features if f not in done]
    summary.skipped = len(features) - len(todo)
    run = _Run(engine, backend, opts, seed, sae_id, vocab, windows, summary)
    stage = f"explain {name}"
    if progress is not None:
        progress(stage, summary.skipped, len(features))
    in_flight = opts.features_in_flight or max(1, backend.concurrency)
    slots = asyncio.Semaphore(in_flight)

    async def one(feature: int) -> tuple[int, ExplanationStatus]:
        async with slots:
            return feature, await _explain_feature(run, feature)

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one(f)) for f in todo]
    in_a_row = 0
    try:
        for finished in asyncio.as_completed(tasks):
            feature, status = await finished
            summary.seconds = time.perf_counter() - start
            in_a_row = in_a_row + 1 if status == "error" else 0
            if progress is not None:
                progress(stage, summary.skipped + summary.done, len(features))
            if in_a_row >= opts.max_consecutive_errors:
                last = _last_error(engine, sae_id, feature, backend.name)
                raise LLMUnavailable(
                    f"the LLM {backend.name} gave no answer for {in_a_row} features in a row (last: {last}); "
                    f"{summary.skipped + summary.ok + summary.failed} of the {len(features)} features of {name} "
                    "are explained and stored: fix the endpoint and run the same command again to resume",
                    summary,
                )
    finally:  # stopped (LLMUnavailable, Ctrl-C): features not started never start; what finished is stored
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summary


def _last_error(engine: Engine, sae_id: int, feature: int, llm: str) -> str:
    from app.core.tables import Explanation

    with session_scope(engine) as session:
        error = session.scalar(
            select(Explanation.error).where(Explanation.sae_id == sae_id, Explanation.feature_index == feature,
                                            Explanation.llm == llm, Explanation.prompt_version == PROMPT_VERSION)
        )  # fmt: skip
    return error or "unknown error"


def explain_sae(
    engine: Engine,
    name: str,
    *,
    backend: ChatBackend,
    features: Sequence[int] | None = None,
    sample: int | None = None,
    seed: int = 0,
    baseline: Literal["random"] | None = None,
    options: ExplainOptions | None = None,
    progress: Progress | None = None,
    data_dir: Path = Path("jumpscope-data"),
    device: str = "auto",
    close_backend: bool = True,
) -> ExplainSummary:
    """Explain and score `features` (or a seeded `sample` of live features) of the registered SAE `name`,
    storing each as it is done and skipping those this LLM and prompt version already explained.

    `baseline="random"` then does the same for NAME-random, a randomly initialised SAE of the same shape
    (built, registered under `data_dir` and indexed like NAME's current index on `device` if needed, see
    app.interp.baseline), on the same explicit features or a sample of its own live features; its summary
    is `summary.baseline`. The backend is closed at the end unless `close_backend` is False.

    Raises ExplainError (bad request), NotFound (unknown SAE), LLMUnavailable (the LLM kept failing; what
    was done is stored), KeyboardInterrupt (likewise)."""
    opts = options or ExplainOptions()

    async def main() -> ExplainSummary:
        try:
            run_id, chosen = choose_features(engine, name, features=features, sample=sample, seed=seed)
            summary = await _explain_all(engine, name, run_id=run_id, features=chosen, backend=backend, opts=opts,
                                         seed=seed, progress=progress)  # fmt: skip
            if baseline == "random":
                from app.interp.baseline import random_baseline

                base = await asyncio.to_thread(
                    random_baseline, engine, name, seed=seed, data_dir=data_dir, device=device, progress=progress
                )
                base_run, base_features = choose_features(engine, base, features=features, sample=sample, seed=seed)
                summary.baseline = await _explain_all(
                    engine, base, run_id=base_run, features=base_features, backend=backend, opts=opts, seed=seed,
                    progress=progress,
                )  # fmt: skip
            return summary
        finally:
            if close_backend:
                await backend.aclose()

    return asyncio.run(main())
