"""What the text -> features page shows of one SAE's reading of a text: each token's strongest
features, the features most active over the whole text (max and count), and their values at
every token (for highlighting). Torch-free: it works on an encoding's sparse per-token lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

TOKEN_TOP = 8
"""Features listed for one token (its strongest)."""
SUMMARY_TOP = 24
"""Features in the summary of the whole text (the most active by max)."""

Active = list[tuple[int, float]]
"""One token's active features: (feature index, value), highest first."""


@dataclass(frozen=True)
class SummaryRow:
    """One feature's activity over the text."""

    index: int
    max: float
    """Its largest value over the text (special tokens left out)."""
    count: int
    """Tokens it is active on (special tokens left out)."""
    max_position: int
    """The token where it peaks."""


@dataclass
class Column:
    """One SAE's reading of the text: what the page shows in that SAE's column."""

    sae: str
    per_token: list[Active]
    """Per token: its TOKEN_TOP strongest features."""
    summary: list[SummaryRow]
    dense: dict[int, list[float]]
    """Summary (and highlighted) feature -> its value at every token."""
    scales: dict[int, float] = field(default_factory=dict)
    """Feature -> the top of its colour scale: its indexed max activation, or its max here if larger."""
    explanations: dict[int, str] = field(default_factory=dict)
    """Feature -> its latest explanation, where one exists."""
    active_features: int = 0
    """Distinct features active anywhere in the text (special tokens left out)."""

    def scale(self, index: int) -> float:
        """The colour scale's top for a feature (1 when nothing is known)."""
        value = self.scales.get(index, 0.0)
        return value if value > 0 and math.isfinite(value) else 1.0


def summarise(activations: Sequence[Active], special: Sequence[bool], top: int = SUMMARY_TOP) -> list[SummaryRow]:
    """The `top` features with the largest max over the ordinary tokens (ties: more tokens first, then index)."""
    best: dict[int, tuple[float, int, int]] = {}  # index -> (max, count, position of max)
    for position, row in enumerate(activations):
        if position < len(special) and special[position]:
            continue  # BOS and other special tokens: attention-sink features would fill the summary
        for index, value in row:
            seen = best.get(index)
            if seen is None:
                best[index] = (value, 1, position)
            else:
                high, count, at = seen
                best[index] = (value, count + 1, position) if value > high else (high, count + 1, at)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    return [SummaryRow(index=i, max=m, count=c, max_position=p) for i, (m, c, p) in ranked[:top]]


def dense_values(activations: Sequence[Active], indices: Sequence[int]) -> dict[int, list[float]]:
    """Feature -> its value at every token (0 where inactive) for the given features."""
    wanted = set(indices)
    out = {i: [0.0] * len(activations) for i in indices}
    for position, row in enumerate(activations):
        for index, value in row:
            if index in wanted:
                out[index][position] = value
    return out


def active_count(activations: Sequence[Active], special: Sequence[bool]) -> int:
    """Distinct features active on the ordinary tokens."""
    return len({i for p, row in enumerate(activations) if not (p < len(special) and special[p]) for i, _ in row})


def column(sae: str, activations: Sequence[Active], special: Sequence[bool], highlight: int | None = None) -> Column:
    """One SAE's column from its full per-token activations (`highlight`: a feature to hold densely too)."""
    summary = summarise(activations, special)
    wanted = [row.index for row in summary]
    if highlight is not None and highlight not in wanted:
        wanted.append(highlight)
    return Column(
        sae=sae,
        per_token=[list(row[:TOKEN_TOP]) for row in activations],
        summary=summary,
        dense=dense_values(activations, wanted),
        active_features=active_count(activations, special),
    )
