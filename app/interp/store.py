"""The explanation store: a feature's examples as `Context`s, and explanations with their scores.

Reads of an index run (the indexer wrote them, app.features.indexer):
- `example_contexts`: a feature's shown examples (what the pages show; the explaining LLM reads these) or
  its held-out ones (only scores read these), top examples first, then the band samples, highest band first;
- `context_windows` + `non_activating_contexts`: the run's random context windows where a feature does not
  fire (its activation is 0 on every token there), drawn reproducibly.

Explanations (`explanations`, `explanation_scores`): `save_explanation` writes one attempt with its scores in
the caller's transaction, replacing an earlier row of the same SAE, feature, LLM and prompt version;
`explained_features` says what a rerun may skip; `latest_explanations`, `feature_explanations`,
`scores_of` and `score_distributions` serve the pages and the REST API (a score may be NULL; a failed
attempt has no text and no scores). A random-init baseline SAE is an SAE row of its own: `baseline_sae`.

Context ids: `Context.example_id` is an `examples.id` for a top or band example and the negated
`index_contexts.id` for a non-activating window (`window_context_id`), so that one id list can name what a
score was computed on; `split_scored_ids` turns it back into the two lists stored in `scored`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.catalog.vocab import decode
from app.core.tables import (
    SCORE_KINDS,
    ExampleSplit,
    Explanation,
    ExplanationScore,
    ExplanationStatus,
    IndexContext,
    SAERow,
    ScoreKind,
)
from app.core.tables import Example as ExampleRow
from app.interp.examples import Context
from app.interp.scoring.result import ScoreResult

RAW_MAX_CHARS = 4000
"""An LLM answer is stored up to this many characters (a model that rambles cannot fill the store)."""
RAW_MAX_ANSWERS = 64
"""At most this many answers of one score are stored (the first ones, in call order)."""
BASELINE_SUFFIX = "-random"
"""`jumpscope explain NAME --baseline random` registers its random-init SAE as NAME-random."""


def _bounded(text: str) -> str:
    return text if len(text) <= RAW_MAX_CHARS else text[:RAW_MAX_CHARS] + " [...]"


# -- contexts ---------------------------------------------------------------------------------------------------------


def window_context_id(row_id: int) -> int:
    """The `Context.example_id` of the non-activating window `index_contexts.id == row_id`: its negation."""
    return -row_id


def split_scored_ids(ids: Iterable[int | None]) -> dict[str, list[int]]:
    """`Context.example_id`s -> {"examples": example ids, "contexts": index_contexts ids} (None left out)."""
    examples = [i for i in ids if i is not None and i > 0]
    contexts = [-i for i in ids if i is not None and i < 0]
    return {"examples": examples, "contexts": contexts}


def _context(token_ids: bytes, values: bytes | None, vocab: tuple[str, ...], context_id: int) -> Context:
    ids = np.frombuffer(token_ids, dtype="<i4").tolist()
    vals = np.frombuffer(values, dtype="<f4") if values is not None else np.zeros(len(ids), dtype="<f4")
    # Stored values are finite activations >= 0; a corrupt row must not stop a run.
    clean = tuple(float(v) if np.isfinite(v) and v > 0 else 0.0 for v in vals)
    return Context(tuple(decode(vocab, t) for t in ids), clean, context_id)


class BandContext(NamedTuple):
    """An example as a Context, and where it came from."""

    band: int
    """-1 for a top example, else its activation band (0 is the lowest)."""
    context: Context
    """The example's window (example_id = examples.id)."""


def example_contexts(
    session: Session, *, run_id: int, feature_index: int, split: ExampleSplit, vocab: tuple[str, ...]
) -> list[BandContext]:
    """A feature's examples of one split: the top examples by rank, then the band samples, highest band first,
    each band in its random order. Empty for an unknown feature."""
    rows = session.scalars(
        select(ExampleRow)
        .where(ExampleRow.run_id == run_id, ExampleRow.feature_index == feature_index, ExampleRow.split == split)
        .order_by((ExampleRow.band == -1).desc(), ExampleRow.band.desc(), ExampleRow.rank)
    ).all()
    return [BandContext(r.band, _context(r.token_ids, r.values, vocab, r.id)) for r in rows]


@dataclass(frozen=True)
class ContextWindow:
    """One random context window of an index run and the features that fire in it."""

    id: int
    """`index_contexts.id`."""
    token_ids: bytes
    """int32 little-endian token ids."""
    fired: np.ndarray = field(repr=False)
    """(n,) int32, ascending: the features firing on some token of the window."""

    def fires(self, feature_index: int) -> bool:
        """Whether `feature_index` fires anywhere in the window."""
        i = int(np.searchsorted(self.fired, feature_index))
        return i < self.fired.shape[0] and int(self.fired[i]) == feature_index


def context_windows(session: Session, *, run_id: int) -> list[ContextWindow]:
    """The run's random context windows (read once per run: a few hundred rows), in reservoir order."""
    rows = session.execute(
        select(IndexContext.id, IndexContext.token_ids, IndexContext.fired)
        .where(IndexContext.run_id == run_id)
        .order_by(IndexContext.rank)
    ).all()
    return [ContextWindow(r.id, r.token_ids, np.frombuffer(r.fired, dtype="<i4")) for r in rows]


def non_activating_contexts(
    windows: Sequence[ContextWindow], *, feature_index: int, n: int, vocab: tuple[str, ...], rng_seed: int
) -> list[Context]:
    """Up to `n` windows where the feature does not fire, as all-zero Contexts (example_id =
    `window_context_id`), drawn at random; the same seed and feature give the same windows."""
    silent = [w for w in windows if not w.fires(feature_index)]
    rng = random.Random(rng_seed * 1_000_003 + feature_index)
    chosen = rng.sample(silent, min(n, len(silent)))
    return [_context(w.token_ids, None, vocab, window_context_id(w.id)) for w in chosen]


# -- writing explanations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreRecord:
    """One score as stored (see `score_record` for a scorer's result)."""

    kind: ScoreKind
    score: float | None
    """None when undefined, or when the scorer could not run (`error`)."""
    n: int
    """Items scored (tokens for simulation, contexts otherwise)."""
    failures: int
    """LLM answers that could not be read."""
    scored_ids: tuple[int | None, ...]
    """`Context.example_id`s of what was scored (see the module docstring)."""
    raw: tuple[str, ...]
    """The LLM's answers, in call order."""
    llm: str
    prompt_version: str
    error: str | None = None
    """Why the score is missing, when the scorer itself failed."""


def score_record(result: ScoreResult) -> ScoreRecord:
    """What to store of a scorer's result."""
    return ScoreRecord(
        kind=result.kind, score=result.score, n=result.n, failures=len(result.failures),
        scored_ids=result.example_ids, raw=result.raw, llm=result.llm, prompt_version=result.prompt_version,
    )  # fmt: skip


def save_explanation(
    session: Session,
    *,
    sae_id: int,
    run_id: int | None,
    feature_index: int,
    llm: str,
    prompt_version: str,
    status: ExplanationStatus,
    text: str | None,
    raw: str,
    error: str | None = None,
    shown_ids: Sequence[int | None] = (),
    seconds: float = 0.0,
    scores: Sequence[ScoreRecord] = (),
) -> Explanation:
    """Store one explain attempt and its scores in the caller's transaction (all or nothing), replacing the
    row of the same SAE, feature, LLM and prompt version (and its scores) if there is one."""
    session.execute(
        delete(Explanation).where(
            Explanation.sae_id == sae_id, Explanation.feature_index == feature_index, Explanation.llm == llm,
            Explanation.prompt_version == prompt_version,
        )
    )  # fmt: skip
    row = Explanation(
        sae_id=sae_id, run_id=run_id, feature_index=feature_index, text=text, llm=llm,
        prompt_version=prompt_version, status=status, shown=[i for i in shown_ids if i is not None],
        raw=_bounded(raw), error=error, seconds=seconds,
    )  # fmt: skip
    for s in scores:
        row.scores.append(
            ExplanationScore(
                kind=s.kind, score=s.score, n=s.n, failures=s.failures, scored=split_scored_ids(s.scored_ids),
                raw=[_bounded(r) for r in s.raw[:RAW_MAX_ANSWERS]], llm=s.llm, prompt_version=s.prompt_version,
                error=s.error,
            )
        )  # fmt: skip
    session.add(row)
    session.flush()
    return row


# -- reading explanations ---------------------------------------------------------------------------------------------


def explained_features(
    session: Session, *, sae_id: int, llm: str, prompt_version: str, retry_failed: bool = False
) -> set[int]:
    """Features of the SAE that a run with this LLM and prompt version skips: explained ones and (unless
    `retry_failed`) failed attempts; attempts the LLM gave no answer to (status error) are tried again."""
    statuses = ["ok"] if retry_failed else ["ok", "failed"]
    rows = session.scalars(
        select(Explanation.feature_index).where(
            Explanation.sae_id == sae_id, Explanation.llm == llm, Explanation.prompt_version == prompt_version,
            Explanation.status.in_(statuses),
        )
    )  # fmt: skip
    return set(rows)


def latest_explanations(
    session: Session, *, sae_id: int, features: Iterable[int] | None = None, llm: str | None = None
) -> dict[int, Explanation]:
    """Per feature its most recent explanation with text (status ok), with its scores loaded; features
    without one are absent. `features` limits the features, `llm` the explaining LLM."""
    latest = select(func.max(Explanation.id)).where(Explanation.sae_id == sae_id, Explanation.status == "ok")
    if llm is not None:
        latest = latest.where(Explanation.llm == llm)
    if features is not None:
        latest = latest.where(Explanation.feature_index.in_(list(features)))
    rows = session.scalars(select(Explanation).where(Explanation.id.in_(latest.group_by(Explanation.feature_index))))
    return {row.feature_index: row for row in rows}


def feature_explanations(session: Session, *, sae_id: int, feature_index: int) -> list[Explanation]:
    """Every stored attempt for one feature (any LLM, failed ones included), newest first, scores loaded."""
    return list(
        session.scalars(
            select(Explanation)
            .where(Explanation.sae_id == sae_id, Explanation.feature_index == feature_index)
            .order_by(Explanation.id.desc())
        )
    )


def scores_of(explanation: Explanation) -> dict[str, float | None]:
    """{"simulation", "detection", "fuzzing"} -> score, None where not computed or undefined."""
    out: dict[str, float | None] = dict.fromkeys(SCORE_KINDS)
    for s in explanation.scores:
        if s.kind in out:
            out[s.kind] = s.score
    return out


def score_distributions(session: Session, *, sae_id: int, llm: str | None = None) -> dict[str, list[float]]:
    """Per score kind, the defined scores of the SAE's latest explanation of each feature (the histogram of
    the paper's Fig. 7); kinds without any score map to []."""
    explanations = latest_explanations(session, sae_id=sae_id, llm=llm)
    out: dict[str, list[float]] = {kind: [] for kind in SCORE_KINDS}
    for row in explanations.values():
        for kind, score in scores_of(row).items():
            if score is not None:
                out[kind].append(score)
    return out


def baseline_name(name: str) -> str:
    """The name the random-init baseline of SAE `name` is registered under."""
    return f"{name}{BASELINE_SUFFIX}"


def baseline_info(sae: SAERow) -> dict[str, Any] | None:
    """{"kind": "random", "of": NAME, "seed": ...} when `sae` is a random-init baseline, else None."""
    info = (sae.config or {}).get("baseline")
    return dict(info) if isinstance(info, dict) and info.get("kind") == "random" else None


def baseline_sae(session: Session, sae: SAERow) -> SAERow | None:
    """The random-init baseline registered for `sae` (by `jumpscope explain NAME --baseline random`), if any."""
    row = session.scalar(select(SAERow).where(SAERow.name == baseline_name(sae.name)))
    info = baseline_info(row) if row is not None else None
    return row if info is not None and info.get("of") == sae.name else None
