"""The text's tokens as buttons: coloured by one feature's activation like the dashboard, each a
`pos` submit button of the page's view form (no JS: a click shows that token's features).

Token strings come from models and users: every one is escaped (markupsafe), titles included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from app.web.formats import fmt_value
from app.web.tokens import COLOURS, DARK_LEVEL, LEVELS, display_token


def token_buttons_html(
    tokens: Sequence[str],
    special: Sequence[bool],
    titles: Sequence[str],
    values: Sequence[float] | None = None,
    scale: float = 1.0,
) -> Markup:
    """One <button name="pos"> per token; with `values`, background by value/scale and the max token outlined.

    Only the first token is in the tab order: the page's JS moves focus with the arrow keys (roving
    tabindex), so a long text is one tab stop.
    """
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    peak: int | None = None
    if values is not None:
        positive = [(v, -i) for i, v in enumerate(values) if v > 0 and math.isfinite(v)]
        peak = -max(positive)[1] if positive else None
    parts: list[str] = []
    for i, token in enumerate(tokens):
        classes = "t"
        style = ""
        value = float(values[i]) if values is not None and i < len(values) else 0.0
        if i == peak:
            classes += " max"
        if i < len(special) and special[i]:
            classes += " sp"
        if 0 < value < math.inf:
            level = LEVELS if value >= scale else round(value * LEVELS / scale)
            if level >= DARK_LEVEL:
                classes += " hi"
            style = f' style="background:{COLOURS[level]}"'
        title = titles[i] if i < len(titles) else ""
        if values is not None:
            title = f"{fmt_value(value)} · {title}" if title else fmt_value(value)
        parts.append(
            f'<button type="submit" name="pos" value="{i}" class="{classes}" data-i="{i}"'
            f' tabindex="{0 if i == 0 else -1}"{style} title="{escape(title)}">{escape(display_token(token))}</button>'
        )
    return Markup("".join(parts))
