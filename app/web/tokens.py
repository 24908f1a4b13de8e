"""Tokens coloured by activation: the colour scale and the HTML spans of one context.

Token strings come from models and users: every one goes through `markupsafe.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from markupsafe import Markup, escape

from app.web.formats import fmt_value

SHORT_RADIUS = 8
"""Tokens either side of the max token in the short context view."""

ORANGES = (
    (255, 245, 235), (254, 230, 206), (253, 208, 162), (253, 174, 107), (253, 141, 60),
    (241, 105, 19), (217, 72, 1), (166, 54, 3), (127, 39, 4),
)  # fmt: skip
"""ColorBrewer 'Oranges': a single-hue sequential scale (readable with every common colour-vision deficiency).
static/app.js holds the same stops."""
LEVELS = 100
DARK_FROM = 0.6
"""Above this fraction of the scale the background is dark enough for white text."""


def _interpolate(t: float) -> str:
    x = min(max(t, 0.0), 1.0) * (len(ORANGES) - 1)
    i = min(int(x), len(ORANGES) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(ORANGES[i], ORANGES[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


COLOURS = tuple(_interpolate(i / LEVELS) for i in range(LEVELS + 1))
DARK_LEVEL = round(DARK_FROM * LEVELS)


def display_token(token: str) -> str:
    """A token's text as shown: newlines and tabs made visible, empty tokens as a dotted space."""
    if not token:
        return "\u2205"
    return token.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u2192")


@lru_cache(maxsize=1 << 16)
def _token_text(token: str) -> str:
    return str(escape(display_token(token)))


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float,
    max_position: int | None = None,
    radius: int | None = None,
    special: Sequence[bool] | None = None,
) -> Markup:
    """Spans for one context: background by value/scale, value in the title, the max token outlined.

    With `radius`, tokens further than that from `max_position` get class `far` (hidden in the short
    view by CSS) and ellipses mark the cuts. Token text is escaped (cached per distinct token).
    The templates pass the arguments by position.
    """
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    levels = LEVELS / scale
    n = len(tokens)
    lo, hi = -1, n
    ell = '<span class="ell" aria-hidden="true">\u2026</span>'
    parts: list[str] = []
    if radius is not None and max_position is not None:
        lo, hi = max_position - radius, max_position + radius
        if lo > 0:
            parts.append(ell)
    n_values, n_special = len(values), len(special) if special is not None else 0
    for i in range(n):
        value = float(values[i]) if i < n_values else 0.0
        classes = "t far" if i < lo or i > hi else "t"
        if i == max_position:
            classes += " max"
        if i < n_special and special[i]:  # type: ignore[index]
            classes += " sp"
        text = _token_text(tokens[i])
        if 0 < value < math.inf:
            level = LEVELS if value >= scale else round(value * levels)
            if level >= DARK_LEVEL:
                classes += " hi"
            parts.append(
                f'<span class="{classes}" style="background:{COLOURS[level]}" title="{value:.3g}">{text}</span>'
            )
        else:
            parts.append(f'<span class="{classes}" title="{fmt_value(value)}">{text}</span>')
    if radius is not None and max_position is not None and hi < n - 1:
        parts.append(ell)
    return Markup("".join(parts))
