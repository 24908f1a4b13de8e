"""Helpers of the HTML pages: the activation colour scale, token highlighting, inline SVG charts,
CSRF tokens, rater cookies and the deterministic order of a rating queue.

Everything that reaches HTML from here goes through `markupsafe.escape` (token strings come from
models and users); numbers are formatted by us. Kept free of FastAPI so it can be tested alone.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from collections.abc import Iterable, Sequence
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

from markupsafe import Markup, escape

from app.catalog.schemas import FrequencyHistogram
from app.features.schemas import Histogram

# --- colour scale -------------------------------------------------------------------------------------------------

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


def activation_colour(fraction: float) -> str:
    """Background colour for an activation at `fraction` of the scale (0..1, clamped)."""
    if not math.isfinite(fraction):
        fraction = 0.0
    return COLOURS[round(min(max(fraction, 0.0), 1.0) * LEVELS)]


def fmt_value(value: float) -> str:
    """An activation for a tooltip: 3 significant digits."""
    return "0" if value == 0 else format(value, ".3g")


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


# --- inline SVG charts ---------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, label: str, body: Iterable[str]) -> Markup:
    text = escape(label)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{text}"><title>{text}</title>{"".join(body)}</svg>'
    )


def frequency_histogram_svg(hist: FrequencyHistogram, width: int = 640, height: int = 180) -> Markup:
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


def activation_histogram_svg(hist: Histogram, width: int = 360, height: int = 140) -> Markup:
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


# --- forms: CSRF, origin, cookies, redirects ------------------------------------------------------------------------

CSRF_COOKIE = "jumpscope_csrf"
RATER_COOKIE = "jumpscope_rater"
TOKEN_COOKIE = "jumpscope_token"
COOKIE_MAX_AGE = 365 * 24 * 3600


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(cookie: str | None, submitted: str | None) -> bool:
    """Double-submit check: the form's token equals the cookie's (constant-time)."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """False when Origin (or, without it, Referer) is present and names another host than the request's Host."""
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    if not host or claimed == "null":
        return False
    try:
        netloc = urlsplit(claimed).netloc
    except ValueError:
        return False
    return netloc.lower() == host.lower()


def cookie_value(text: str) -> str:
    """A cookie-safe form of a name (percent-encoded like JS encodeURIComponent)."""
    return quote(text, safe="")


def from_cookie(value: str | None) -> str | None:
    if not value:
        return None
    text = unquote(value).strip()
    return text[:100] if text and "\x00" not in text else None


def safe_next(target: str | None, default: str) -> str:
    """A local redirect target (a path on this server), else `default`: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(c in target for c in "\r\n\x00\\"):
        return default
    return target


# --- rating queue ---------------------------------------------------------------------------------------------------


def queue_seed(study: str, rater: str) -> int:
    """The shuffle seed of a study queue: the same for the same study and rater, so a reload keeps the order."""
    digest = hashlib.sha256(f"jumpscope-queue\x00{study}\x00{rater}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def queue_order(items: Sequence[tuple[str, int]], *, shuffle: bool, study: str, rater: str) -> list[tuple[str, int]]:
    """The order a rater sees (sae name, feature index) items in: by SAE and index, or shuffled per study+rater."""
    ordered = sorted(items)
    if shuffle:
        random.Random(queue_seed(study, rater)).shuffle(ordered)
    return ordered


def next_position(order: Sequence[tuple[str, int]], rated: set[tuple[str, int]], after: int) -> int | None:
    """The first unrated position after `after`, wrapping around; None when everything is rated."""
    n = len(order)
    for step in range(1, n + 1):
        pos = (after + step) % n
        if order[pos] not in rated:
            return pos
    return None
