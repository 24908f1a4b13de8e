"""The plots of automated interpretability: a score's distribution over an SAE's features with its random
baseline's overlaid (the paper's Fig. 7), and a score's mean with its 95% interval per group (architecture).

Self-contained SVG like app.sweeps.chart and app.studies.chart (xmlns, presentation attributes, Okabe-Ito
colours), so the same text works inline under the pages' strict CSP and saved as a file. Every bar and point
has a <title> with its numbers; the chart as a whole has an aria-label that says what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from app.interp.distributions import CHANCE, SCORE_RANGES
from app.interp.schemas import ScoreStats

SAE_COLOUR = "#D55E00"
"""Okabe-Ito vermillion: the SAE's histogram."""
BASELINE_COLOUR = "#0072B2"
"""Okabe-Ito blue: the random baseline's histogram (outlined, so both stay visible where they overlap)."""
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
AXIS_LABELS = {"simulation": "simulation score (correlation)", "detection": "detection score (balanced accuracy)",
               "fuzzing": "fuzzing score (balanced accuracy)"}  # fmt: skip


@dataclass(frozen=True)
class Group:
    """One group of the interval chart: its name, colour and statistics."""

    name: str
    colour: str
    stats: ScoreStats


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _n(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _svg(width: int, height: int, label: str, body: Sequence[str]) -> Markup:
    text = escape(label)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{text}"><title>{text}</title>{"".join(body)}</svg>'
    )


def _describe(name: str, stats: ScoreStats) -> str:
    return f"{name}: {stats.n} features, mean {_n(stats.mean)}, median {_n(stats.median)}"


def distribution_svg(
    kind: str, sae: str, stats: ScoreStats, baseline: tuple[str, ScoreStats] | None = None, *,
    width: int = 420, height: int = 230,
) -> Markup:  # fmt: skip
    """The share of features per score bin: the SAE's as filled bars, the baseline's (name, stats) as outlined
    bars over them, each mean a dashed line."""
    title = f"{kind} scores of {sae}" + (" and its random baseline" if baseline else "")
    if stats.n == 0 and (baseline is None or baseline[1].n == 0):
        return Markup(f'<p class="muted">{escape(title)}: no scores yet.</p>')
    left, right, top, bottom = 44, 12, 58 if baseline else 44, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = SCORE_RANGES[kind]
    base_y = top + plot_h
    series = [(sae, stats, SAE_COLOUR, True)] + (
        [(baseline[0], baseline[1], BASELINE_COLOUR, False)] if baseline else []
    )
    peak = max(max(c / s.n for c in s.histogram.counts) for _, s, _, _ in series if s.n) or 1.0

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    def sy(share: float) -> float:
        return base_y - share / peak * plot_h

    out = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="15" {FONT} font-weight="bold" fill="#222222">{escape(kind.capitalize())} scores'
           "</text>"]  # fmt: skip
    for tick in (0.0, peak / 2, peak):
        y = _fmt(sy(tick))
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{_fmt(sy(tick) + 4)}" {FONT} text-anchor="end" fill="#444444">'
                   f"{100 * tick:.0f}%</text>")  # fmt: skip
    for tick in sorted({lo, (lo + hi) / 2, hi, CHANCE[kind]}):
        x = _fmt(sx(tick))
        out.append(f'<text x="{x}" y="{base_y + 14}" {FONT} text-anchor="middle" fill="#444444">{tick:g}</text>')
    chance = _fmt(sx(CHANCE[kind]))
    out.append(f'<line x1="{chance}" x2="{chance}" y1="{top}" y2="{base_y}" stroke="#999999" stroke-dasharray="2 3">'
               f"<title>chance: {CHANCE[kind]:g}</title></line>")  # fmt: skip
    for name, s, colour, filled in series:
        if not s.n:
            continue
        step = (hi - lo) / s.histogram.bins
        for i, count in enumerate(s.histogram.counts):
            share = count / s.n
            if not count:
                continue
            a, b = lo + i * step, lo + (i + 1) * step
            tip = escape(f"{name}: {count} of {s.n} features ({100 * share:.0f}%) score {a:g} to {b:g}")
            out.append(
                f'<rect x="{_fmt(sx(a) + 0.5)}" y="{_fmt(sy(share))}" width="{_fmt(max(sx(b) - sx(a) - 1, 1))}" '
                f'height="{_fmt(base_y - sy(share))}" {_paint(colour, filled)}><title>{tip}</title></rect>'
            )
        if s.mean is not None:
            x = _fmt(sx(s.mean))
            out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{base_y}" stroke="{colour}" stroke-width="1.5" '
                       f'stroke-dasharray="5 3"><title>{escape(name)}: mean {s.mean:.3f}</title></line>')  # fmt: skip
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base_y}" y2="{base_y}" stroke="#888888"/>')
    out.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" {FONT} text-anchor="middle" fill="#222222">'
               f"{escape(AXIS_LABELS.get(kind, kind))}</text>")  # fmt: skip
    out.append(f'<text transform="translate(11 {top + plot_h / 2:.0f}) rotate(-90)" {FONT} text-anchor="middle" '
               'fill="#222222">share of features</text>')  # fmt: skip
    for row, (name, s, colour, filled) in enumerate(series):  # the legend: a line each, under the title
        ly, lx = 30 + 14 * row, left
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="12" height="10" {_paint(colour, filled)}/>')
        out.append(f'<text x="{lx + 16}" y="{ly + 1}" {FONT} fill="#222222">{escape(_legend(name, s))}</text>')
    label = f"Histogram of {title}. " + "; ".join(_describe(name, s) for name, s, _, _ in series)
    return _svg(width, height, label, out)


def _paint(colour: str, filled: bool) -> str:
    return f'fill="{colour}" fill-opacity="0.75"' if filled else f'fill="none" stroke="{colour}" stroke-width="1.5"'


def _legend(name: str, stats: ScoreStats, chars: int = 34) -> str:
    short = name if len(name) <= chars else name[: chars - 1] + "\u2026"
    return f"{short} (n={stats.n}, mean {_n(stats.mean)})"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round values spanning [lo, hi]."""
    span = hi - lo or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def intervals_svg(kind: str, groups: Sequence[Group], title: str, *, height: int = 240) -> Markup:
    """Per group the mean score as a point with its 95% interval as an error bar; chance as a dashed line."""
    shown = [g for g in groups if g.stats.mean is not None]
    if not shown:
        return Markup(f'<p class="muted">{escape(title)}: no {escape(kind)} scores yet.</p>')
    left, right, top, bottom = 52, 16, 30, 50
    slot = 100
    plot_w, plot_h = max(len(shown) * slot, 200), height - top - bottom
    width = left + plot_w + right
    base_y = top + plot_h
    ends = [v for g in shown for v in (g.stats.low, g.stats.high, g.stats.mean) if v is not None] + [CHANCE[kind]]
    lo, hi = min(ends), max(ends)
    pad = (hi - lo) * 0.1 or 0.05
    r_lo, r_hi = SCORE_RANGES[kind]
    lo, hi = max(r_lo, lo - pad), min(r_hi, hi + pad)

    def sy(v: float) -> float:
        return base_y - (v - lo) / (hi - lo) * plot_h

    out = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="17" {FONT} font-weight="bold" fill="#222222">{escape(title)}</text>']  # fmt: skip
    for tick in _nice_ticks(lo, hi):
        y = _fmt(sy(tick))
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{_fmt(sy(tick) + 4)}" {FONT} text-anchor="end" fill="#444444">'
                   f"{tick:g}</text>")  # fmt: skip
    chance = _fmt(sy(CHANCE[kind]))
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{chance}" y2="{chance}" stroke="#999999" '
               f'stroke-dasharray="4 3"><title>chance: {CHANCE[kind]:g}</title></line>')  # fmt: skip
    out.append(f'<text transform="translate(13 {top + plot_h / 2:.0f}) rotate(-90)" {FONT} text-anchor="middle" '
               f'fill="#222222">mean {escape(kind)} score</text>')  # fmt: skip
    for i, g in enumerate(shown):
        s = g.stats
        assert s.mean is not None
        x = left + (i + 0.5) * plot_w / len(shown)
        interval = f", 95% interval {s.low:.3f} to {s.high:.3f}" if s.low is not None and s.high is not None else ""
        tip = escape(f"{g.name}: mean {s.mean:.3f}{interval}, median {_n(s.median)}, {s.n} features")
        bar = ""
        if s.low is not None and s.high is not None:
            bar = (f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(sy(s.high))}" y2="{_fmt(sy(s.low))}" '
                   f'stroke="#222222" stroke-width="1.2"/>'
                   + "".join(f'<line x1="{_fmt(x - 5)}" x2="{_fmt(x + 5)}" y1="{_fmt(sy(v))}" y2="{_fmt(sy(v))}" '
                             f'stroke="#222222" stroke-width="1.2"/>' for v in (s.low, s.high)))  # fmt: skip
        out.append(f'<g>{bar}<circle cx="{_fmt(x)}" cy="{_fmt(sy(s.mean))}" r="5" fill="{g.colour}" '
                   f'stroke="#ffffff" stroke-width="1"/><title>{tip}</title></g>')  # fmt: skip
        name = g.name if len(g.name) <= 16 else g.name[:15] + "\u2026"
        out.append(f'<text x="{_fmt(x)}" y="{base_y + 15}" {FONT} text-anchor="middle" fill="#222222">'
                   f"{escape(name)}<title>{escape(g.name)}</title></text>")  # fmt: skip
        out.append(f'<text x="{_fmt(x)}" y="{base_y + 29}" {FONT} text-anchor="middle" fill="#666666">n={s.n}</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base_y}" y2="{base_y}" stroke="#888888"/>')
    parts = "; ".join(_describe(g.name, g.stats) for g in shown)
    return _svg(width, height, f"{title}: mean {kind} score with 95% interval per group. {parts}", out)
