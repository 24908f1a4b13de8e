"""The page's reading of an encoding (app.textview.view) against a naive reference, and the token buttons."""

from __future__ import annotations

import random

from app.textview.tokens import token_buttons_html
from app.textview.view import SUMMARY_TOP, TOKEN_TOP, column, dense_values, summarise


def random_activations(seed: int, tokens: int = 30, d_sae: int = 50) -> list[list[tuple[int, float]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(tokens):
        row = [(i, round(rng.uniform(0.1, 5.0), 1)) for i in rng.sample(range(d_sae), rng.randint(0, 12))]
        out.append(sorted(row, key=lambda a: -a[1]))
    return out


def test_summary_matches_a_naive_reference_and_leaves_special_tokens_out() -> None:
    for seed in range(20):
        acts = random_activations(seed)
        special = [i == 0 for i in range(len(acts))]
        acts[0] = [(49, 1e4)]  # a sink feature on BOS must not lead the summary
        got = summarise(acts, special)
        dense = dense_values(acts, range(50))
        ordinary = range(1, len(acts))
        ref = []
        for f in range(50):
            vals = [dense[f][p] for p in ordinary]
            if any(v > 0 for v in vals):
                high = max(vals)
                first_peak = next(p for p in ordinary if dense[f][p] == high)
                ref.append((f, high, sum(v > 0 for v in vals), first_peak))
        ref.sort(key=lambda r: (-r[1], -r[2], r[0]))
        assert [(r.index, r.max, r.count, r.max_position) for r in got] == ref[:SUMMARY_TOP]
        assert got[0].max < 1e4  # the BOS value counts nowhere


def test_column_keeps_the_top_features_per_token_and_the_highlighted_one_densely() -> None:
    acts = random_activations(3)
    acts[5] = [(i, 10.0 - i * 0.1) for i in range(12)]
    col = column("s", acts, [False] * len(acts), highlight=48)
    assert col.per_token[5] == acts[5][:TOKEN_TOP]
    assert 48 in col.dense and set(col.dense) == {r.index for r in col.summary} | {48}
    assert col.dense[0][5] == 10.0
    assert col.scale(12345) == 1.0


def test_token_buttons_escape_colour_and_outline_the_peak() -> None:
    html = str(token_buttons_html(["<b>", '"q"', "x"], [True, False, False], ["#1 2 <i>", "", ""], [0, 2.0, 4.0], 4.0))
    assert "<b>" not in html and "&lt;b&gt;" in html and "&#34;q&#34;" in html and "&lt;i&gt;" in html
    buttons = html.split("</button>")[:3]
    assert 'class="t sp"' in buttons[0] and "background" not in buttons[0]
    assert "background:" in buttons[1] and 'class="t max hi"' in buttons[2]
    assert 'tabindex="0"' in buttons[0] and 'tabindex="-1"' in buttons[2]
