"""The maths of the scores: Pearson correlation, balanced accuracy, an expected value over a
distribution of 0-10 answers, and a mean over defined values. Plain floats, no arrays: the inputs
are a few thousand numbers at most."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r between `x` and `y` (same length).

    None when it is undefined: fewer than two points, or either side constant (zero variance). A
    simulation that predicts the same value everywhere, or held-out text on which the feature never
    fires, has no correlation; its score is reported as None rather than invented (0 or 1)."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values but {len(y)} y values")
    n = len(x)
    if n < 2:
        return None
    mx = math.fsum(x) / n
    my = math.fsum(y) / n
    dx = [a - mx for a in x]
    dy = [b - my for b in y]
    sxx = math.fsum(d * d for d in dx)
    syy = math.fsum(d * d for d in dy)
    # Relative tolerance: a side whose spread is rounding noise of its mean counts as constant.
    if sxx <= (1e-12 * max(1.0, abs(mx))) ** 2 * n or syy <= (1e-12 * max(1.0, abs(my))) ** 2 * n:
        return None
    sxy = math.fsum(a * b for a, b in zip(dx, dy, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def balanced_accuracy(truth: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """The mean of the true-positive rate and the true-negative rate: (TP/P + TN/N) / 2.

    0.5 is chance whatever the class balance. None when `truth` lacks either class (a rate is
    undefined); lengths must match."""
    if len(truth) != len(predicted):
        raise ValueError(f"balanced_accuracy: {len(truth)} truths but {len(predicted)} predictions")
    positives = sum(1 for t in truth if t)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t and p)
    tn = sum(1 for t, p in zip(truth, predicted, strict=True) if not t and not p)
    return (tp / positives + tn / negatives) / 2


def expected_value(probabilities: Mapping[int, float]) -> float | None:
    """The mean of a distribution over answer values, renormalised over the values given:
    sum(v * p_v) / sum(p_v). None when no probability mass is given."""
    total = math.fsum(p for p in probabilities.values() if p > 0)
    if total <= 0:
        return None
    return math.fsum(v * p for v, p in probabilities.items() if p > 0) / total


def mean_defined(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return math.fsum(kept) / len(kept) if kept else None
