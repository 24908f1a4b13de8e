"""What detection and fuzzing share: contexts shown in batches, a 0/1 answer per context parsed
from a list, and balanced accuracy over the contexts whose batch was answered.

A batch whose answer cannot be parsed (no list, wrong count) is a recorded failure with its raw
text and its contexts are left out of the score, not counted as wrong answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.interp.errors import ParseError
from app.interp.llm.base import ChatBackend, Message
from app.interp.scoring.calls import chat_all
from app.interp.scoring.result import Failure, ScoreKind, ScoreResult
from app.interp.scoring.stats import balanced_accuracy

_LABELS = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False}
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
# "Example 2: 0" alone on its line (an echoed example whose text starts with "No ..." is not an answer).
_NUMBERED = re.compile(
    r"example\s*(\d+)\s*[:=\-]?\s*(1|0|true|false|yes|no)[ \t]*[.,;)]?[ \t]*$", re.IGNORECASE | re.MULTILINE
)
_SEPARATORS = re.compile(r"[\s,;\[\]()]+")


@dataclass(frozen=True)
class Item:
    """One context as shown to the classifier, and the right answer."""

    text: str
    """The context rendered on one line (marked, for fuzzing)."""
    truth: bool
    """The right answer: activating (detection) or correctly marked (fuzzing)."""
    example_id: int | None
    """The context's store id."""


@dataclass(frozen=True, kw_only=True)
class ClassificationResult(ScoreResult):
    """A detection or fuzzing score with every context's answer."""

    shown: tuple[str, ...]
    """Each context's text as shown, in `example_ids` order."""
    truth: tuple[bool, ...]
    """The right answer per context."""
    predicted: tuple[bool | None, ...]
    """The LLM's answer per context; None where its batch failed."""


def _label(word: str) -> bool | None:
    return _LABELS.get(word.strip().strip("\"'`").lower())


def parse_labels(text: str, n: int) -> tuple[bool, ...]:
    """The `n` 0/1 answers in an answer, in order (1 / true / yes is True).

    Accepts the first bracketed list of labels (`[1, 0, 1]`), else numbered lines (`Example 2: 0`)
    covering examples 1..n, else an answer of bare labels (`1 0 1`). Raises ParseError when none is
    found or the count is not `n`."""
    for m in _BRACKETS.finditer(text):
        words = [w for w in _SEPARATORS.split(m.group(1)) if w]
        labels = [_label(w) for w in words]
        if words and all(lab is not None for lab in labels):
            if len(labels) != n:
                raise ParseError(f"misaligned: {len(labels)} answers for {n} examples", text)
            return tuple(bool(lab) for lab in labels)
    numbered: dict[int, bool] = {}
    for m in _NUMBERED.finditer(text):
        numbered.setdefault(int(m.group(1)), bool(_label(m.group(2))))
    if numbered and all(k in numbered for k in range(1, n + 1)):
        return tuple(numbered[k] for k in range(1, n + 1))
    words = [w for w in _SEPARATORS.split(text) if w]
    bare = [_label(w) for w in words]
    if words and all(lab is not None for lab in bare):
        if len(bare) != n:
            raise ParseError(f"misaligned: {len(bare)} answers for {n} examples", text)
        return tuple(bool(lab) for lab in bare)
    if numbered:
        raise ParseError(f"answers for examples {sorted(numbered)} but {n} were shown", text)
    raise ParseError("no list of 0/1 answers found", text)


def examples_block(texts: Sequence[str]) -> str:
    """The numbered example lines of a prompt (numbered from 1)."""
    return "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))


async def classify(
    backend: ChatBackend,
    items: Sequence[Item],
    *,
    kind: ScoreKind,
    prompt_version: str,
    build: Callable[[Sequence[str]], list[Message]],
    batch_size: int,
) -> ClassificationResult:
    """Show `items` in batches of `batch_size` (prompts from `build(texts)`), parse the answers and
    score them by balanced accuracy. LLMError propagates."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    prompts = [build([it.text for it in batch]) for batch in batches]
    # An answer is a short list; room for "Example k: 1" lines and a little preamble.
    limits = [8 * len(batch) + 16 for batch in batches]
    replies = await chat_all(backend, prompts, max_tokens=limits)
    predicted: list[bool | None] = []
    failures: list[Failure] = []
    for i, (batch, reply) in enumerate(zip(batches, replies, strict=True)):
        try:
            predicted.extend(parse_labels(reply.text, len(batch)))
        except ParseError as exc:
            failures.append(Failure(call=i, reason=exc.reason, raw=reply.text))
            predicted.extend([None] * len(batch))
    answered = [(it.truth, p) for it, p in zip(items, predicted, strict=True) if p is not None]
    return ClassificationResult(
        kind=kind,
        score=balanced_accuracy([t for t, _ in answered], [p for _, p in answered]) if answered else None,
        n=len(answered),
        failures=tuple(failures),
        raw=tuple(r.text for r in replies),
        llm=backend.name,
        prompt_version=prompt_version,
        example_ids=tuple(it.example_id for it in items),
        shown=tuple(it.text for it in items),
        truth=tuple(it.truth for it in items),
        predicted=tuple(predicted),
    )
