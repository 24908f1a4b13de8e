"""The statistics of a set of scores: n, mean, median, standard deviation, a 95% interval of the mean and an
equal-width histogram over the score's range (the numbers behind the paper's Fig. 7 and the sweep comparison).

Simulation scores are Pearson correlations in [-1, 1]; detection and fuzzing scores are balanced accuracies in
[0, 1] (0.5 is chance). The interval is the normal approximation mean +- 1.96 s / sqrt(n): with the tens to
thousands of features explained per SAE, the t quantile differs from 1.96 by under 5% from n = 20 on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from app.interp.schemas import ScoreHistogram, ScoreStats

SCORE_RANGES: dict[str, tuple[float, float]] = {"simulation": (-1.0, 1.0), "detection": (0.0, 1.0),
                                                "fuzzing": (0.0, 1.0)}  # fmt: skip
"""The range each score kind can take: the histograms' span."""
CHANCE: dict[str, float] = {"simulation": 0.0, "detection": 0.5, "fuzzing": 0.5}
"""What an explanation that says nothing scores on average."""
DEFAULT_BINS = 20
MAX_BINS = 200
EDGE_SLACK = 1e-9
"""How close (in bins) below an edge a score may be and still count in the bin above it."""
Z95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values (None, NaN and infinities left out)."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def histogram(values: Iterable[float], kind: str, bins: int = DEFAULT_BINS) -> ScoreHistogram:
    """Counts in `bins` equal-width bins over the kind's range, each bin [a, b) and the last one [a, max]; a
    value outside the range counts in the end bin. A score on an edge counts in the bin above it (to within
    EDGE_SLACK: 0.2 is in [0.2, 0.3), although 1.2 / 0.1 is 11.999... in floating point)."""
    lo, hi = SCORE_RANGES[kind]
    data = np.asarray(finite(values), dtype=np.float64)  # (n,)
    index = np.floor((data - lo) * bins / (hi - lo) + EDGE_SLACK).astype(np.int64)  # (n,)
    counts = np.bincount(np.clip(index, 0, bins - 1), minlength=bins)  # (bins,)
    return ScoreHistogram(min=lo, max=hi, bins=bins, counts=[int(c) for c in counts])


def score_stats(values: Iterable[float | None], kind: str, bins: int = DEFAULT_BINS) -> ScoreStats:
    """n, mean, median, sample std, the 95% interval of the mean and the histogram of the finite values."""
    data = np.asarray(finite(values), dtype=np.float64)  # (n,)
    n = int(data.shape[0])
    hist = histogram(data.tolist(), kind, bins)
    if n == 0:
        return ScoreStats(n=0, mean=None, median=None, std=None, low=None, high=None, histogram=hist)
    mean, median = float(data.mean()), float(np.median(data))
    if n < 2:
        return ScoreStats(n=n, mean=mean, median=median, std=None, low=None, high=None, histogram=hist)
    std = float(data.std(ddof=1))
    half = Z95 * std / math.sqrt(n)
    return ScoreStats(n=n, mean=mean, median=median, std=std, low=mean - half, high=mean + half, histogram=hist)
