"""Detection score (delphi's definition): shown the explanation, the LLM says of each held-out
context whether the feature fires in it; activating and non-activating contexts in equal numbers;
score = balanced accuracy.

Contexts are shown as plain text (nothing marked), shuffled, several to a prompt; the answer is a
list of 0/1, one per context.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from app.interp.examples import Context, render
from app.interp.llm.base import ChatBackend, Message
from app.interp.scoring.classify import ClassificationResult, Item, classify, examples_block

PROMPT_VERSION = "detection-v1"
"""Recorded with every detection score; bump it whenever the prompt or the parser changes."""

_SYSTEM = (
    "You check an explanation of a feature of a language model. The feature fires on some texts and not on others. "
    "For each text example, decide from the explanation whether the feature fires on it: 1 if it does, 0 if not. "
    "Answer with a list of 1s and 0s, one per example, like [1, 0, 1], and nothing else."
)
_FEW_SHOT = (
    "Explanation: names of days of the week\n"
    + examples_block(
        [
            "We met on Friday after work.",
            "The cat sat on the mat.",
            "Sunday mornings are quiet.",
            "He bought three apples.",
        ]
    ),
    "[1, 0, 1, 0]",
)


def detection_messages(explanation: str, texts: Sequence[str]) -> list[Message]:
    """The detection prompt for one batch: system, one worked example, the explanation and the texts."""
    return [
        Message("system", _SYSTEM),
        Message("user", _FEW_SHOT[0]),
        Message("assistant", _FEW_SHOT[1]),
        Message("user", f"Explanation: {' '.join(explanation.split())}\n{examples_block(texts)}"),
    ]


def detection_items(contexts: Sequence[Context], *, rng_seed: int) -> list[Item]:
    """Equal numbers of activating and non-activating contexts (the larger side subsampled at
    random), shuffled, each as plain text with its truth."""
    rng = random.Random(rng_seed)
    activating = [c for c in contexts if c.is_activating]
    silent = [c for c in contexts if not c.is_activating]
    k = min(len(activating), len(silent))
    chosen = [(c, True) for c in rng.sample(activating, k)] + [(c, False) for c in rng.sample(silent, k)]
    rng.shuffle(chosen)
    return [Item(render(c.tokens), truth, c.example_id) for c, truth in chosen]


async def score_detection(
    backend: ChatBackend, explanation: str, contexts: Sequence[Context], *, rng_seed: int, batch_size: int = 5
) -> ClassificationResult:
    """Detection: balanced accuracy of the LLM telling activating from non-activating `contexts`
    given `explanation`. The score is None when either kind is missing. LLMError propagates."""
    return await classify(
        backend,
        detection_items(contexts, rng_seed=rng_seed),
        kind="detection",
        prompt_version=PROMPT_VERSION,
        build=lambda texts: detection_messages(explanation, texts),
        batch_size=batch_size,
    )
