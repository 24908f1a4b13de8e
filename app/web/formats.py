"""How pages print numbers and times: the Jinja filters and globals for values (no HTML here)."""

from __future__ import annotations

import math
from typing import Any

DASH = "\u2014"
"""Shown for a missing or non-finite value."""


def fmt_value(value: float) -> str:
    """An activation for a tooltip: 3 significant digits."""
    return "0" if value == 0 else format(value, ".3g")


def fmt_frequency(value: float | None) -> str:
    """A firing frequency for people: a percentage, or scientific notation when tiny."""
    if value is None or not math.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    return f"{value * 100:.3g}%" if value >= 1e-3 else f"{value:.2e}"


def fmt_number(value: Any, digits: int = 3) -> str:
    """A metric with a few significant digits; missing values as an em dash."""
    if isinstance(value, bool) or value is None:
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, f".{digits}g") if math.isfinite(value) else DASH
    return str(value)


def fmt_when(value: Any) -> str:
    """A timestamp to the second, in UTC."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else DASH


def fmt_width(d_sae: int) -> str:
    """A dictionary width the way people say it: 16384 -> '16k'."""
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)
