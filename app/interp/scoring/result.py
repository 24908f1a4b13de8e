"""What a scorer returns: the score and everything needed to store and audit it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScoreKind = Literal["simulation", "detection", "fuzzing"]


@dataclass(frozen=True)
class Failure:
    """One LLM call whose answer could not be used; its items are left out of the score."""

    call: int
    """Index of the call in the result's `raw` (a context for simulation, a batch otherwise)."""
    reason: str
    """Why the answer was unusable."""
    raw: str
    """The answer as written."""


@dataclass(frozen=True, kw_only=True)
class ScoreResult:
    """A score of one explanation on held-out contexts."""

    kind: ScoreKind
    """Which score."""
    score: float | None
    """The score; None when undefined (nothing parsed, or one class / constant truth only)."""
    n: int
    """How many items the score is over: tokens for simulation, contexts for detection and fuzzing."""
    failures: tuple[Failure, ...]
    """The calls whose answers were unusable (their items are not in `n`)."""
    raw: tuple[str, ...]
    """Every LLM answer, one per call, in call order."""
    llm: str
    """The backend's name."""
    prompt_version: str
    """The prompt version of this scorer."""
    example_ids: tuple[int | None, ...]
    """The store ids of the contexts scored, in the order they were shown (failed calls included)."""
