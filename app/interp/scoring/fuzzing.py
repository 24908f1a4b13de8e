"""Fuzzing score (delphi's definition): held-out activating contexts are shown with tokens marked,
half at the tokens where the feature truly fires and half at random tokens where it does not; the
LLM says of each whether the marked tokens fit the explanation; score = balanced accuracy.

A wrongly marked context gets as many marks as its true marking would have, on tokens where the
feature is 0 (a context that fires everywhere cannot be wrongly marked and is dropped). The marks
are single tokens at random places, so runs of several truly marked tokens look different; delphi's
newer "active" variant shifts the true spans instead. Non-activating contexts are not used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from app.interp.examples import MARK_FRACTION, Context, marked_positions, render
from app.interp.llm.base import ChatBackend, Message
from app.interp.scoring.classify import ClassificationResult, Item, classify, examples_block

PROMPT_VERSION = "fuzzing-v1"
"""Recorded with every fuzzing score; bump it whenever the prompt or the parser changes."""

_SYSTEM = (
    "You check an explanation of a feature of a language model. In each text example some tokens are marked "
    "<<like this>>; the marks may be right or wrong. For each example, answer 1 if every marked token fits the "
    "explanation, or 0 if a marked token does not. "
    "Answer with a list of 1s and 0s, one per example, like [1, 0, 1], and nothing else."
)
_FEW_SHOT = (
    "Explanation: names of days of the week\n"
    + examples_block(
        [
            "We met on<< Friday>> after work.",
            "The<< cat>> sat there on Monday.",
            "<<Sunday>> mornings are quiet.",
            "He bought<< three>> apples on Tuesday.",
        ]
    ),
    "[1, 0, 1, 0]",
)


def fuzzing_messages(explanation: str, texts: Sequence[str]) -> list[Message]:
    """The fuzzing prompt for one batch: system, one worked example, the explanation and the marked texts."""
    return [
        Message("system", _SYSTEM),
        Message("user", _FEW_SHOT[0]),
        Message("assistant", _FEW_SHOT[1]),
        Message("user", f"Explanation: {' '.join(explanation.split())}\n{examples_block(texts)}"),
    ]


def fuzzing_items(contexts: Sequence[Context], *, rng_seed: int, fraction: float = MARK_FRACTION) -> list[Item]:
    """The activating `contexts`, shuffled and split in halves: the first marked at its activating
    tokens (truth True), the second at as many random tokens where the feature is 0 (truth False)."""
    rng = random.Random(rng_seed)
    activating = [c for c in contexts if c.is_activating]
    rng.shuffle(activating)
    half = len(activating) // 2
    items = [Item(render(c.tokens, marked_positions(c, fraction)), True, c.example_id) for c in activating[:half]]
    for c in activating[half : 2 * half]:
        zeros = [i for i, v in enumerate(c.values) if v == 0]
        if not zeros:
            continue
        wrong = rng.sample(zeros, min(len(marked_positions(c, fraction)), len(zeros)))
        items.append(Item(render(c.tokens, wrong), False, c.example_id))
    rng.shuffle(items)
    return items


async def score_fuzzing(
    backend: ChatBackend,
    explanation: str,
    contexts: Sequence[Context],
    *,
    rng_seed: int,
    batch_size: int = 5,
    fraction: float = MARK_FRACTION,
) -> ClassificationResult:
    """Fuzzing: balanced accuracy of the LLM telling true from random markings of held-out activating
    `contexts` given `explanation` (fewer than two activating contexts: score None). LLMError propagates."""
    return await classify(
        backend,
        fuzzing_items(contexts, rng_seed=rng_seed, fraction=fraction),
        kind="fuzzing",
        prompt_version=PROMPT_VERSION,
        build=lambda texts: fuzzing_messages(explanation, texts),
        batch_size=batch_size,
    )
