"""Inline SVG charts: the firing-frequency histogram, an activation histogram and a training curve.

Each returns `Markup` with a <title> and an aria-label; labels are escaped, numbers formatted here.
The histograms are read through the protocols below, so this module knows no API model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol

from markupsafe import Markup, escape

from app.web.formats import fmt_value


class FrequencyCounts(Protocol):
    """Features counted by log10 firing frequency (the catalogue's FrequencyHistogram)."""

    @property
    def edges(self) -> Sequence[float]: ...
    @property
    def counts(self) -> Sequence[int]: ...
    @property
    def dead(self) -> int: ...
    @property
    def dense_1pct(self) -> int: ...


class Binned(Protocol):
    """Counts in `bins` equal-width bins over [0, max] (a feature's activation Histogram)."""

    @property
    def max(self) -> float: ...
    @property
    def bins(self) -> int: ...
    @property
    def counts(self) -> Sequence[int]: ...


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, label: str, body: Iterable[str]) -> Markup:
    text = escape(label)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{text}"><title>{text}</title>{"".join(body)}</svg>'
    )


def frequency_histogram_svg(hist: FrequencyCounts, width: int = 640, height: int = 180) -> Markup:
    """Log10 firing frequency of every feature: a 'dead' bar on the left, the dense region (>1%) shaded."""
    left, right, top, bottom = 40, 10, 22, 34
    slots = len(hist.counts) + 3  # dead bar, a gap, then the bins
    slot = (width - left - right) / max(slots, 1)
    peak = max([*hist.counts, hist.dead, 1])
    plot_h = height - top - bottom
    lo, hi = hist.edges[0], hist.edges[-1]

    def x_of(log_f: float) -> float:
        return left + 3 * slot + (log_f - lo) / (hi - lo) * slot * len(hist.counts)

    out: list[str] = []
    dense_x = x_of(-2.0)
    out.append(
        f'<rect class="dense-zone" x="{_num(dense_x)}" y="{top}" width="{_num(x_of(hi) - dense_x)}" '
        f'height="{plot_h}"><title>dense: firing on more than 1% of tokens</title></rect>'
    )
    out.append(f'<text class="lab" x="{_num(dense_x + 3)}" y="{top - 6}">dense (&gt;1%): {hist.dense_1pct}</text>')
    for mark in (-2.0, -1.0):
        x = _num(x_of(mark))
        out.append(f'<line class="mark" x1="{x}" x2="{x}" y1="{top}" y2="{top + plot_h}"/>')
    base = top + plot_h
    h = plot_h * hist.dead / peak
    out.append(
        f'<rect class="bar dead" x="{_num(left + 0.1 * slot)}" y="{_num(base - h)}" width="{_num(slot * 1.8)}" '
        f'height="{_num(h)}"><title>dead (never fired): {hist.dead}</title></rect>'
    )
    out.append(f'<text class="lab" x="{_num(left + slot)}" y="{base + 14}" text-anchor="middle">dead</text>')
    out.append(f'<text class="lab" x="{_num(left + slot)}" y="{_num(base - h - 3)}" text-anchor="middle">'
               f"{hist.dead}</text>")  # fmt: skip
    for i, count in enumerate(hist.counts):
        h = plot_h * count / peak
        a, b = hist.edges[i], hist.edges[i + 1]
        dense = " dense" if a >= -2.0 else ""
        out.append(
            f'<rect class="bar{dense}" x="{_num(x_of(a) + 0.5)}" y="{_num(base - h)}" '
            f'width="{_num(max(slot - 1, 1))}" height="{_num(h)}">'
            f"<title>frequency 1e{a:g} to 1e{b:g}: {count} features</title></rect>"
        )
    for decade in range(math.ceil(lo), math.floor(hi) + 1):
        x = _num(x_of(decade))
        label = "1" if decade == 0 else f"1e{decade}"
        out.append(f'<text class="lab" x="{x}" y="{base + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}"/>')
    out.append(f'<text class="lab" x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>')
    out.append(f'<text class="lab" x="{left - 4}" y="{base}" text-anchor="end">0</text>')
    out.append(f'<text class="lab" x="{width / 2:.0f}" y="{height - 4}" text-anchor="middle">'
               "firing frequency (log scale)</text>")  # fmt: skip
    live = sum(hist.counts)
    return _svg(width, height, f"Firing frequency of {live + hist.dead} features: {hist.dead} dead, "
                f"{hist.dense_1pct} firing on more than 1% of tokens", out)  # fmt: skip


def activation_histogram_svg(hist: Binned, width: int = 360, height: int = 140) -> Markup:
    """Counts of non-zero activations in equal-width bins over [0, max]."""
    if not hist.counts or hist.bins <= 0 or hist.max <= 0:
        return Markup('<p class="muted">No activations recorded.</p>')
    left, right, top, bottom = 40, 10, 8, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(max(hist.counts), 1)
    slot = plot_w / hist.bins
    step = hist.max / hist.bins
    base = top + plot_h
    out: list[str] = []
    for i, count in enumerate(hist.counts):
        h = plot_h * count / peak
        out.append(
            f'<rect class="bar act" x="{_num(left + i * slot)}" y="{_num(base - h)}" width="{_num(max(slot - 1, 1))}" '
            f'height="{_num(h)}"><title>{fmt_value(i * step)} to {fmt_value((i + 1) * step)}: {count}</title></rect>'
        )
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}"/>')
    out.append(f'<text class="lab" x="{left}" y="{base + 14}">0</text>')
    out.append(f'<text class="lab" x="{width - right}" y="{base + 14}" text-anchor="end">{fmt_value(hist.max)}</text>')
    out.append(f'<text class="lab" x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    out.append(f'<text class="lab" x="{width / 2:.0f}" y="{height - 4}" text-anchor="middle">activation</text>')
    return _svg(width, height, f"Histogram of {sum(hist.counts)} non-zero activations from 0 to "
                f"{fmt_value(hist.max)}", out)  # fmt: skip


def line_chart_svg(points: Sequence[tuple[float, float]], label: str, width: int = 320, height: int = 170) -> Markup:
    """A training curve: value against step, min and max marked on the axes."""
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 2:
        return Markup(f'<p class="muted">{escape(label)}: no data yet.</p>')
    left, right, top, bottom = 52, 12, 20, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    coords = " ".join(
        f"{_num(left + (x - x0) / dx * plot_w)},{_num(top + plot_h - (y - y0) / dy * plot_h)}" for x, y in pts
    )
    base = top + plot_h
    last = pts[-1][1]
    out = [
        f'<text class="lab head" x="{left}" y="13">{escape(label)} (last {fmt_value(last)})</text>',
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}"/>',
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{base}"/>',
        f'<polyline class="curve" points="{coords}"/>',
        f'<text class="lab" x="{left - 4}" y="{top + 8}" text-anchor="end">{fmt_value(y1)}</text>',
        f'<text class="lab" x="{left - 4}" y="{base}" text-anchor="end">{fmt_value(y0)}</text>',
        f'<text class="lab" x="{left}" y="{base + 14}">{fmt_value(x0)}</text>',
        f'<text class="lab" x="{width - right}" y="{base + 14}" text-anchor="end">{fmt_value(x1)}</text>',
        f'<text class="lab" x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>',
    ]
    return _svg(width, height, f"{label} against training step, {len(pts)} points, last {fmt_value(last)}", out)
