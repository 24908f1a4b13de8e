"""Contexts, quantisation to the 0-10 scale, marking and the held-out split (app.interp.examples)."""

from __future__ import annotations

import pytest

from app.interp.examples import (
    Context,
    display_token,
    hold_out,
    marked_positions,
    quantise,
    render,
    render_marked,
)


def test_quantise_is_floor_of_tenths_of_the_feature_max() -> None:
    # 10 * v / 2: 0, 2.5, 5, 9.95, 10, 15 -> floor, capped at 10.
    assert quantise([0, 0.5, 1.0, 1.99, 2.0, 3.0], 2.0) == (0, 2, 5, 9, 10, 10)
    assert quantise([0.0, 1.0], 0.0) == (0, 0)
    assert quantise([], 1.0) == ()


def test_context_validates_and_summarises() -> None:
    c = Context(("a", " b", " c"), (0.0, 2.0, 2.0), example_id=4)
    assert c.max_value == 2.0 and c.max_position == 1 and c.is_activating
    assert not Context(("a",), (0.0,)).is_activating
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        Context(("a", "b"), (0.0,))
    with pytest.raises(ValueError, match="finite and >= 0"):
        Context(("a",), (float("nan"),))
    with pytest.raises(ValueError, match="finite and >= 0"):
        Context(("a",), (-1.0,))


def test_around_max_keeps_the_window_and_the_id() -> None:
    c = Context(tuple(f"t{i}" for i in range(10)), tuple(float(i == 6) for i in range(10)), example_id=9)
    w = c.around_max(before=2, after=1)
    assert w.tokens == ("t4", "t5", "t6", "t7") and w.values == (0.0, 0.0, 1.0, 0.0) and w.example_id == 9
    assert c.around(0, before=3, after=0).tokens == ("t0",)


def test_marking_runs_share_one_pair_and_weak_tails_stay_unmarked() -> None:
    c = Context(("a", " b", " c", " d", " e"), (0.0, 1.0, 0.5, 0.2, 0.9))
    assert marked_positions(c) == (1, 2, 4)  # 0.2 < 0.3 of the max
    assert render_marked(c) == "a<< b c>> d<< e>>"
    assert render_marked(c, fraction=0.0) == "a<< b c d e>>"
    assert marked_positions(Context(("a",), (0.0,))) == ()


def test_display_escapes_newlines_and_names_blank_tokens() -> None:
    assert render(("one", "\n", "two\t"), [1]) == "one<<\\n>>two\\t"
    assert display_token("\n\n") == "\\n\\n"
    assert display_token(" ") == "[space]"
    assert display_token("") == "[empty]"
    assert display_token(" Monday") == " Monday"


def test_hold_out_splits_pairs_of_equal_strength_without_overlap() -> None:
    contexts = [Context(("x",), (float(v),), example_id=v) for v in (5, 9, 1, 7, 3, 8, 2)]
    shown, held = hold_out(contexts, rng_seed=3)
    ids_shown = [c.example_id for c in shown]
    ids_held = [c.example_id for c in held]
    assert sorted(ids_shown + ids_held) == [1, 2, 3, 5, 7, 8, 9]
    assert not set(ids_shown) & set(ids_held)
    assert len(shown) == 4 and len(held) == 3
    # Ranked 9 8 | 7 5 | 3 2 | 1: each side holds one member of each pair.
    for pair in ({9, 8}, {7, 5}, {3, 2}):
        assert len(pair & set(ids_shown)) == 1 and len(pair & set(ids_held)) == 1
    assert 1 in ids_shown
    assert hold_out(contexts, rng_seed=3) == (shown, held)
    splits = {tuple(c.example_id for c in hold_out(contexts, rng_seed=s)[0]) for s in range(20)}
    assert len(splits) > 1  # the seed decides which member of a pair is shown
