"""The sweep's plot: a metric against L0 (log scale), one line per architecture, each point a link.

Self-contained SVG (xmlns, presentation attributes, no classes or style attributes), so the same
text works inline under the pages' strict CSP, as a file in the README and stored in the
database. Colours are Okabe-Ito (distinguishable with every common colour-vision deficiency),
and every architecture has its own marker shape too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from trainer.saes import registry

STYLE: dict[str, tuple[str, str]] = {
    "jumprelu": ("#D55E00", "circle"),
    "relu": ("#0072B2", "square"),
    "topk": ("#009E73", "triangle"),
    "gated": ("#CC79A7", "diamond"),
}
"""Colour and marker of each built-in architecture (kept fixed, so stored plots never change)."""
EXTRA_COLOURS = ("#E69F00", "#56B4E9", "#000000", "#F0E442")
"""The rest of Okabe-Ito, for architectures registered later (trainer.saes.registry)."""
SHAPES = ("circle", "square", "triangle", "diamond")
FALLBACK = ("#555555", "circle")
"""An architecture that is not registered (any more)."""
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class ChartPoint:
    """One SAE on the chart."""

    l0: float
    value: float
    label: str
    """Shown on hover: the SAE and its figures."""
    href: str | None = None
    """Where clicking the point goes (its SAE page), if anywhere."""


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round values spanning [lo, hi] (a linear axis)."""
    span = hi - lo or abs(hi) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 times powers of ten within [lo, hi]."""
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10**exp
            if lo <= v <= hi:
                ticks.append(float(v))
    return ticks


def style(arch: str) -> tuple[str, str]:
    """(colour, marker) of an architecture: STYLE's, else the next of EXTRA_COLOURS x SHAPES in
    registration order, so every registered architecture plots distinguishably."""
    if arch in STYLE:
        return STYLE[arch]
    others = [name for name in registry.names() if name not in STYLE]
    if arch not in others:
        return FALLBACK
    i = others.index(arch)
    return EXTRA_COLOURS[i % len(EXTRA_COLOURS)], SHAPES[i % len(SHAPES)]


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    r = 4.5
    fill = f'fill="{colour}" stroke="#ffffff" stroke-width="1"'
    if shape == "square":
        return f'<rect x="{_fmt(x - r)}" y="{_fmt(y - r)}" width="{_fmt(2 * r)}" height="{_fmt(2 * r)}" {fill}/>'
    if shape == "triangle":
        pts = f"{_fmt(x)},{_fmt(y - r * 1.2)} {_fmt(x - r * 1.1)},{_fmt(y + r)} {_fmt(x + r * 1.1)},{_fmt(y + r)}"
        return f'<polygon points="{pts}" {fill}/>'
    if shape == "diamond":
        h = r * 1.3
        pts = f"{_fmt(x)},{_fmt(y - h)} {_fmt(x + r)},{_fmt(y)} {_fmt(x)},{_fmt(y + h)} {_fmt(x - r)},{_fmt(y)}"
        return f'<polygon points="{pts}" {fill}/>'
    return f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="{_fmt(r)}" {fill}/>'


def pareto_svg(
    series: Mapping[str, Sequence[ChartPoint]], y_label: str, title: str, *, width: int = 560, height: int = 340
) -> Markup:
    """`y_label` against L0 (log x axis), a line and markers per architecture, a legend."""
    pts = [p for points in series.values() for p in points if p.l0 > 0 and math.isfinite(p.value)]
    if not pts:
        return Markup(f'<p class="muted">{escape(title)}: no points yet.</p>')
    left, right, top, bottom = 58, 118, 28, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    x_lo, x_hi = min(p.l0 for p in pts), max(p.l0 for p in pts)
    x_lo, x_hi = (x_lo / 1.25, x_hi * 1.25)
    y_lo, y_hi = min(p.value for p in pts), max(p.value for p in pts)
    pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.1 or 0.1
    y_lo, y_hi = min(0.0, y_lo - pad) if y_lo >= 0 and y_lo - pad < 0 else y_lo - pad, y_hi + pad

    def sx(l0: float) -> float:
        return left + (math.log(l0) - math.log(x_lo)) / (math.log(x_hi) - math.log(x_lo)) * plot_w

    def sy(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    base = top + plot_h
    out = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="16" {FONT} font-weight="bold" fill="#222222">{escape(title)}</text>']  # fmt: skip
    for tick in _log_ticks(x_lo, x_hi):
        x = _fmt(sx(tick))
        out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{base}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x}" y="{base + 15}" {FONT} text-anchor="middle" fill="#444444">{tick:g}</text>')
    for tick in _nice_ticks(y_lo, y_hi):
        y = _fmt(sy(tick))
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{_fmt(sy(tick) + 4)}" {FONT} text-anchor="end" fill="#444444">'
                   f"{tick:g}</text>")  # fmt: skip
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888888"/>')
    out.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" {FONT} text-anchor="middle" fill="#222222">'
               "L0 (active latents per token, log scale)</text>")  # fmt: skip
    out.append(f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" {FONT} text-anchor="middle" '
               f'fill="#222222">{escape(y_label)}</text>')  # fmt: skip
    for row, (arch, points) in enumerate(series.items()):
        colour, shape = style(arch)
        line = sorted((p for p in points if p.l0 > 0 and math.isfinite(p.value)), key=lambda p: p.l0)
        if len(line) > 1:
            coords = " ".join(f"{_fmt(sx(p.l0))},{_fmt(sy(p.value))}" for p in line)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in line:
            mark = _marker(shape, sx(p.l0), sy(p.value), colour) + f"<title>{escape(p.label)}</title>"
            if p.href:
                out.append(f'<a href="{escape(p.href)}" aria-label="{escape(p.label)}">{mark}</a>')
            else:
                out.append(f"<g>{mark}</g>")
        ly = top + 10 + row * 20
        lx = left + plot_w + 14
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(_marker(shape, lx + 11, ly, colour))
        out.append(f'<text x="{lx + 28}" y="{ly + 4}" {FONT} fill="#222222">{escape(arch)}</text>')
    label = escape(f"{title}: {y_label} against L0 for {', '.join(series)}")
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{label}"><title>{label}</title>{"".join(out)}</svg>'
    )
