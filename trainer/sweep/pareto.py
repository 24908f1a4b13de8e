"""Reading a sparsity sweep: its metrics compared at matched L0 (pure Python, no torch).

Architectures reach different L0s at their knob values, so they are compared on curves: each
architecture's metric is interpolated linearly in log L0 between its own points, the way a
reader reads the paper's Fig. 2 at a vertical line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

METRICS = (
    "l0",
    "fvu",
    "fvu_typical",
    "delta_lm_loss",
    "dead_fraction",
    "dense_fraction_1pct",
    "dense_fraction_10pct",
    "mse",
)
"""The evaluation columns of a result row, in table order."""


def _interpolate_log_l0(points: Sequence[tuple[float, float]], l0: float) -> float | None:
    """The metric at `l0` on the piecewise-linear curve through (log L0, metric); None outside its range."""
    pts = sorted((math.log(x), y) for x, y in points if x > 0 and math.isfinite(y))
    target = math.log(l0) if l0 > 0 else -math.inf
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= target <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return None


def matched_l0(rows: Sequence[dict[str, Any]], metric: str, reference: str = "jumprelu") -> list[dict[str, Any]]:
    """At each reference point's L0, every other architecture's `metric` interpolated on its own
    curve (linear in log L0), where that L0 lies inside the other's range.

    Rows: {"architecture", "l0", metric, ...}. Returns one dict per (reference point, other
    architecture): l0, the reference's value, the other's, their difference other - reference
    and ratio other / reference (None unless the reference is positive). For a lower-is-better
    metric a positive difference means the reference is better.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.get(metric) is not None and row.get("l0") is not None:
            curves.setdefault(row["architecture"], []).append((float(row["l0"]), float(row[metric])))
    out: list[dict[str, Any]] = []
    for l0, value in sorted(curves.get(reference, [])):
        for arch, curve in curves.items():
            if arch == reference:
                continue
            other = _interpolate_log_l0(curve, l0)
            if other is not None:
                out.append(
                    {
                        "l0": l0,
                        "architecture": arch,
                        "reference": value,
                        "other": other,
                        "difference": other - value,
                        "ratio": other / value if value > 0 else None,
                    }
                )
    return out


__all__ = ["METRICS", "matched_l0"]
