"""The study plot (the paper's Fig. 6): the share of yes / maybe / no per group (SAE or architecture) as grouped
bars, each with its 95% Wilson interval as an error bar.

Self-contained SVG like app.sweeps.chart (xmlns, presentation attributes, Okabe-Ito colours), so the
same text works inline under the pages' strict CSP and saved as a file. Every bar has a <title> with
its count, share and interval; the chart as a whole has an aria-label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from markupsafe import Markup, escape

COLOURS = {"yes": "#009E73", "maybe": "#E69F00", "no": "#D55E00"}
"""Okabe-Ito bluish green, orange and vermillion: distinguishable with every common colour-vision deficiency."""
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
NAME_CHARS = 18
"""Group names longer than this are cut under the axis (the bars' titles carry the whole name)."""


class Share(Protocol):
    """One label's share of a group's ratings and its interval (app.studies.results.LabelShare)."""

    @property
    def label(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def share(self) -> float: ...
    @property
    def low(self) -> float: ...
    @property
    def high(self) -> float: ...


class Group(Protocol):
    """A group of ratings (app.studies.results.GroupResult)."""

    @property
    def name(self) -> str: ...
    @property
    def ratings(self) -> int: ...
    @property
    def shares(self) -> Sequence[Share]: ...


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def shares_svg(groups: Sequence[Group], title: str, *, height: int = 300) -> Markup:
    """Grouped bars: per group, the share of each label with its 95% Wilson interval; a legend on the right."""
    if not groups:
        return Markup(f'<p class="muted">{escape(title)}: no ratings yet.</p>')
    left, right, top, bottom = 48, 96, 30, 48
    bar, gap = 18, 22
    n_labels = max(len(g.shares) for g in groups)
    slot = n_labels * bar + gap  # one group's bars and the space after them
    plot_w, plot_h = max(len(groups) * slot + gap, 200), height - top - bottom  # room for the title
    width = left + plot_w + right
    base = top + plot_h

    def sy(share: float) -> float:
        return base - share * plot_h

    out = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="17" {FONT} font-weight="bold" fill="#222222">{escape(title)}</text>']  # fmt: skip
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _fmt(sy(tick))
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{_fmt(sy(tick) + 4)}" {FONT} text-anchor="end" fill="#444444">'
                   f"{_pct(tick)}</text>")  # fmt: skip
    out.append(f'<text transform="translate(13 {top + plot_h / 2:.0f}) rotate(-90)" {FONT} text-anchor="middle" '
               'fill="#222222">share of ratings</text>')  # fmt: skip
    for g, group in enumerate(groups):
        x0 = left + gap + g * slot
        for i, s in enumerate(group.shares):
            x = x0 + i * bar
            colour = COLOURS.get(s.label, "#555555")
            tip = escape(f"{group.name}: {s.label} {s.count} of {group.ratings} ({_pct(s.share)}, "
                         f"95% interval {_pct(s.low)} to {_pct(s.high)})")  # fmt: skip
            out.append(
                f'<g><rect x="{_fmt(x + 1)}" y="{_fmt(sy(s.share))}" width="{bar - 2}" '
                f'height="{_fmt(s.share * plot_h)}" fill="{colour}"/>'
                f'<line x1="{_fmt(x + bar / 2)}" x2="{_fmt(x + bar / 2)}" y1="{_fmt(sy(s.high))}" '
                f'y2="{_fmt(sy(s.low))}" stroke="#222222" stroke-width="1.2"/>'
                + "".join(
                    f'<line x1="{_fmt(x + bar / 2 - 4)}" x2="{_fmt(x + bar / 2 + 4)}" y1="{_fmt(sy(end))}" '
                    f'y2="{_fmt(sy(end))}" stroke="#222222" stroke-width="1.2"/>'
                    for end in (s.low, s.high)
                )
                + f"<title>{tip}</title></g>"
            )
        centre = _fmt(x0 + n_labels * bar / 2)
        name = group.name if len(group.name) <= NAME_CHARS else group.name[: NAME_CHARS - 1] + "\u2026"
        out.append(f'<text x="{centre}" y="{base + 15}" {FONT} text-anchor="middle" fill="#222222">'
                   f"{escape(name)}<title>{escape(group.name)}</title></text>")  # fmt: skip
        out.append(f'<text x="{centre}" y="{base + 29}" {FONT} text-anchor="middle" fill="#666666">'
                   f"n={group.ratings}</text>")  # fmt: skip
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}" stroke="#888888"/>')
    for row, (label, colour) in enumerate(COLOURS.items()):
        ly = top + 8 + row * 20
        lx = left + plot_w + 14
        out.append(f'<rect x="{lx}" y="{ly - 7}" width="14" height="14" fill="{colour}"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 4}" {FONT} fill="#222222">{label}</text>')
    out.append(f'<line x1="{left + plot_w + 21}" x2="{left + plot_w + 21}" y1="{top + 62}" y2="{top + 80}" '
               'stroke="#222222" stroke-width="1.2"/>')  # fmt: skip
    out.append(f'<text x="{left + plot_w + 34}" y="{top + 75}" {FONT} fill="#222222">95% CI</text>')
    parts = "; ".join(f"{g.name} " + ", ".join(f"{s.label} {_pct(s.share)}" for s in g.shares) for g in groups)
    label = escape(f"{title}: share of yes, maybe and no with 95% Wilson intervals. {parts}")
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{label}"><title>{escape(title)}</title>{"".join(out)}</svg>'
    )
