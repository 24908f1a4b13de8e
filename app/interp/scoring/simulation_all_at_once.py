"""The "all at once" simulator (Bills et al. 2023; OpenAI's neuron-explainer): predictions read from the
model's next-token probabilities in one teacher-forced pass, nothing generated.

- The prompt: instructions, three worked examples (a topic, a word among similar words, a word that
  does not occur), then the explanation; the assistant's answer is written for the model: one line
  per token, `token<TAB>unknown`. At the offset after each tab the backend (a PrefillScorer) reads
  the distribution of the next token over the answers "0".."9", renormalised; the prediction is its
  expected value. The lines before a token say "unknown" (the paper's placeholder), so one forward
  pass serves every token and no prediction depends on an earlier sampled one.
- Measured on token-identity features of real text (the true activation is 1 on one word): the
  user message holds only the explanation, not the token list the generation prompt shows first
  (with it, SmolLM2-135M and Gemma 3 270M rated the right and a wrong explanation alike: the list
  puts the explanation far from the lines), and the examples include a word among look-alikes and
  a word that is absent (with only the topic example, the same).
- Scale 0-9, not 0-10: "10" is two tokens ("1" "0") for SmolLM2 and Gemma 3, so its first token is
  the answer "1"'s and one pass cannot tell them apart (the model would spell its strongest answer
  with the token read as 1). Every answer 0-9 is one token in these tokenizers. Predictions are
  rescaled by 10/9 onto the 0-10 scale the rest of the simulation speaks (Pearson's r is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.interp.examples import SCALE_MAX, Context, display_token
from app.interp.llm.base import LLMError, Message, PrefillScorer

ALL_AT_ONCE_PROMPT_VERSION = "simulate-all-at-once-v1"
"""Recorded with every all-at-once simulation score; bump it whenever this prompt or its reading changes."""

UNKNOWN = "unknown"
"""The placeholder written for every token's activation in the teacher-forced answer."""

TOP = 9
"""The highest answer on this prompt's scale (each answer 0..TOP is one token)."""

CANDIDATES: tuple[str, ...] = tuple(str(v) for v in range(TOP + 1))
"""The answers whose next-token probabilities are read."""

_SYSTEM = (
    "We study a feature of a language model that fires on some tokens of a text. "
    f"Given an explanation of the feature, predict how strongly it fires on each token of a new text, from 0 "
    f"(not at all) to {TOP} (as strongly as it ever does). Most tokens are 0. "
    f'Write one line per token, in order: the token, a tab, the number; "{UNKNOWN}" marks an activation not '
    "predicted yet."
)
_FEW_SHOT: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    (
        "names of days of the week",
        (("See", 0), (" you", 0), (" on", 0), (" Monday", 9), (" or", 0), (" Tuesday", 8), (".", 0)),
    ),
    (
        'the word "cat"',
        (("He", 0), (" walked", 0), (" his", 0), (" dog", 0), (" to", 0), (" the", 0), (" cat", 9), (" shelter", 0),
         (".", 0)),
    ),
    (
        'the word "river"',
        (("Rain", 0), (" fell", 0), (" on", 0), (" the", 0), (" roof", 0), (" all", 0), (" night", 0), (".", 0)),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class AllAtOncePrompt:
    """What the backend reads for one context."""

    messages: tuple[Message, ...]
    """System, the worked examples (a user and an assistant turn each), and the explanation."""
    assistant_prefix: str
    """The teacher-forced answer: `token<TAB>unknown` per token."""
    positions: tuple[int, ...]
    """Per token, the offset in `assistant_prefix` just after its tab (where its answer is read)."""


@dataclass(frozen=True)
class AllAtOnceReading:
    """The predictions read for one context."""

    values: tuple[float, ...]
    """Per token the expected answer, rescaled to 0-10."""
    text: str
    """The readings as text, `token<TAB>prediction` per line (kept as the call's raw answer)."""


def all_at_once_prompt(explanation: str, context: Context) -> AllAtOncePrompt:
    """The all-at-once prompt for one context (tokens shown as `display_token` writes them)."""
    messages = [Message("system", _SYSTEM)]
    for example, answer in _FEW_SHOT:
        messages.append(Message("user", f"Explanation: {example}"))
        messages.append(Message("assistant", "\n".join(f"{tok}\t{v}" for tok, v in answer)))
    messages.append(Message("user", f"Explanation: {' '.join(explanation.split())}"))
    prefix = ""
    positions: list[int] = []
    for tok in (display_token(t) for t in context.tokens):
        prefix += f"{tok}\t"
        positions.append(len(prefix))
        prefix += f"{UNKNOWN}\n"
    return AllAtOncePrompt(tuple(messages), prefix, tuple(positions))


def expected_answer(distribution: dict[str, float]) -> float:
    """The expected answer (0..TOP) of a distribution over CANDIDATES, renormalised over those given.

    Raises LLMError when it holds no probability (the backend's reading is unusable)."""
    total = math.fsum(p for p in distribution.values() if p > 0)
    if not total > 0 or not math.isfinite(total):
        raise LLMError(f"the backend read no probability on the answers 0-{TOP}: {distribution}")
    return math.fsum(int(c) * p for c, p in distribution.items() if p > 0) / total


async def read_all_at_once(backend: PrefillScorer, explanation: str, context: Context) -> AllAtOnceReading:
    """The all-at-once predictions for one (non-empty) context; LLMError propagates."""
    prompt = all_at_once_prompt(explanation, context)
    distributions = await backend.next_token_distributions(
        prompt.messages, prompt.assistant_prefix, prompt.positions, CANDIDATES
    )
    if len(distributions) != len(prompt.positions):
        raise LLMError(f"{backend.name} read {len(distributions)} distributions for {len(prompt.positions)} positions")
    values = tuple(expected_answer(d) * SCALE_MAX / TOP for d in distributions)
    text = "\n".join(f"{display_token(t)}\t{v:.3f}" for t, v in zip(context.tokens, values, strict=True))
    return AllAtOnceReading(values, text)
