"""The examples an LLM reads: a context window of decoded tokens with the feature's activation on
each, and how they are written into prompts.

- Marking: the tokens where a feature fires are wrapped in `<<` `>>` (runs of marked tokens share one
  pair), as delphi and Neuronpedia show them.
- Quantising: true activations map to the 0-10 scale the simulation speaks, relative to the
  feature's max activation, as Bills et al. (2023) do: `min(10, floor(10 * v / max))`.
- Display: newlines and tabs in tokens are written as `\\n` and `\\t` so a context stays on one line
  (and a token on one line of the simulation prompt); whitespace-only tokens get a visible name.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MARK_OPEN = "<<"
MARK_CLOSE = ">>"
MARK_FRACTION = 0.3
"""A token is marked as activating when it fires at >= this fraction of its context's max (delphi's
default highlight threshold): weak tail activations of a strong example stay unmarked."""
SCALE_MAX = 10
"""The top of the simulation scale (0-10)."""


@dataclass(frozen=True)
class Context:
    """One window of text and the feature's true activation on each of its tokens."""

    tokens: tuple[str, ...]
    """The decoded token strings of the window, in order."""
    values: tuple[float, ...]
    """The feature's activation per token (0 where it does not fire); same length as `tokens`."""
    example_id: int | None = None
    """The store's example row this window came from, recorded with explanations and scores."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.values):
            raise ValueError(f"Context: {len(self.tokens)} tokens but {len(self.values)} values")
        for v in self.values:
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"Context: activations must be finite and >= 0, got {v}")

    @property
    def max_value(self) -> float:
        """The largest activation in the window (0 for an empty or non-activating one)."""
        return max(self.values, default=0.0)

    @property
    def is_activating(self) -> bool:
        """Whether the feature fires anywhere in the window."""
        return self.max_value > 0

    @property
    def max_position(self) -> int:
        """Index of the (first) largest activation; 0 for an empty window."""
        return max(range(len(self.values)), key=lambda i: (self.values[i], -i), default=0)

    def around(self, position: int, *, before: int, after: int) -> Context:
        """The sub-window of `before` tokens before `position`, the token itself and `after` after it."""
        start = max(0, position - before)
        end = min(len(self.tokens), position + after + 1)
        return Context(self.tokens[start:end], self.values[start:end], self.example_id)

    def around_max(self, *, before: int = 24, after: int = 8) -> Context:
        """The sub-window around the largest activation (most features depend on what precedes it)."""
        return self.around(self.max_position, before=before, after=after)


def quantise(values: Iterable[float], max_value: float) -> tuple[int, ...]:
    """Activations on the 0-10 scale relative to `max_value` (the feature's max): floor(10 v / max),
    capped at 10; all 0 when `max_value` <= 0."""
    if max_value <= 0:
        return tuple(0 for _ in values)
    return tuple(min(SCALE_MAX, math.floor(SCALE_MAX * max(v, 0.0) / max_value)) for v in values)


def marked_positions(context: Context, fraction: float = MARK_FRACTION) -> tuple[int, ...]:
    """The positions that fire at >= `fraction` of the context's own max (none if it never fires)."""
    top = context.max_value
    if top <= 0:
        return ()
    return tuple(i for i, v in enumerate(context.values) if v > 0 and v >= fraction * top)


def _escape(token: str) -> str:
    return token.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def display_token(token: str) -> str:
    """A token as a prompt lists it: newlines and tabs escaped, whitespace-only tokens named."""
    shown = _escape(token)
    if shown.strip():
        return shown
    return "[space]" if shown else "[empty]"


def render(tokens: Sequence[str], marked: Iterable[int] = ()) -> str:
    """The tokens as one line of text, with each run of `marked` positions inside one `<<` `>>` pair."""
    marks = set(marked)
    out: list[str] = []
    for i, token in enumerate(tokens):
        if i in marks and i - 1 not in marks:
            out.append(MARK_OPEN)
        out.append(_escape(token))
        if i in marks and i + 1 not in marks:
            out.append(MARK_CLOSE)
    return "".join(out)


def render_marked(context: Context, fraction: float = MARK_FRACTION) -> str:
    """The context as one line with its activating tokens marked."""
    return render(context.tokens, marked_positions(context, fraction))


def hold_out(contexts: Sequence[Context], *, rng_seed: int) -> tuple[list[Context], list[Context]]:
    """Split contexts into (to explain from, held out to score on) of equal strength.

    The contexts are ranked by max activation and each consecutive pair sends one member, drawn at
    random, to each side (an odd last one goes to the explain side), so both sides span the same
    range of activations and no context is on both."""
    rng = random.Random(rng_seed)
    ranked = sorted(contexts, key=lambda c: -c.max_value)
    shown: list[Context] = []
    held: list[Context] = []
    for i in range(0, len(ranked), 2):
        pair = ranked[i : i + 2]
        if len(pair) == 2 and rng.random() < 0.5:
            pair.reverse()
        shown.append(pair[0])
        held.extend(pair[1:])
    return shown, held
