"""The score maths against hand-computed cases (app.interp.scoring.stats)."""

from __future__ import annotations

import math

import pytest

from app.interp.scoring.stats import balanced_accuracy, expected_value, mean_defined, pearson


def test_pearson_matches_a_table_computed_by_hand() -> None:
    # x = 1..5, y = 2 4 5 4 5: means 3 and 4; deviations (-2 -1 0 1 2) and (-2 0 1 0 1);
    # sum dx*dy = 4 + 0 + 0 + 0 + 2 = 6, sum dx^2 = 10, sum dy^2 = 6, so r = 6 / sqrt(60).
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / math.sqrt(60), rel=1e-12)
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(0.7745966692414834)


def test_pearson_is_symmetric_scale_free_and_signed() -> None:
    x, y = [0.0, 1.0, 4.0, 2.0], [1.0, 3.0, 2.0, 0.5]
    assert pearson(x, y) == pytest.approx(pearson(y, x))
    assert pearson([10 * v + 3 for v in x], y) == pytest.approx(pearson(x, y))
    assert pearson([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    assert pearson([0, 1, 2], [0, 10, 20]) == pytest.approx(1.0)


def test_pearson_is_none_when_undefined() -> None:
    assert pearson([3, 3, 3], [0, 1, 2]) is None  # constant prediction
    assert pearson([0, 1, 2], [0, 0, 0]) is None  # the feature never fires
    assert pearson([0.1, 0.1, 0.1], [0, 1, 2]) is None  # constant up to rounding of the mean
    assert pearson([1.0], [2.0]) is None
    assert pearson([], []) is None
    with pytest.raises(ValueError, match="3 x values but 2"):
        pearson([1, 2, 3], [1, 2])


def test_balanced_accuracy_by_hand() -> None:
    # 3 positives, 1 right (TPR 2/3); 1 negative, called positive (TNR 0): (2/3 + 0) / 2.
    assert balanced_accuracy([True, True, True, False], [True, False, True, True]) == pytest.approx(1 / 3)
    # 1 positive, right (TPR 1); 3 negatives, 2 right (TNR 2/3): 5/6.
    assert balanced_accuracy([True, False, False, False], [True, False, False, True]) == pytest.approx(5 / 6)
    assert balanced_accuracy([True, False], [True, False]) == 1.0
    assert balanced_accuracy([True, False], [False, True]) == 0.0
    # Always answering "yes" is chance, whatever the balance (plain accuracy would say 0.75).
    assert balanced_accuracy([True, True, True, False], [True] * 4) == 0.5


def test_balanced_accuracy_undefined_and_bad_input() -> None:
    assert balanced_accuracy([True, True], [True, False]) is None
    assert balanced_accuracy([], []) is None
    with pytest.raises(ValueError, match="2 truths but 1"):
        balanced_accuracy([True, False], [True])


def test_expected_value_renormalises_over_the_values_given() -> None:
    # p(0) = 0.5, p(5) = 0.25, p(10) = 0.125 (the rest of the mass on non-digit tokens):
    # (0 * 0.5 + 5 * 0.25 + 10 * 0.125) / 0.875 = 2.5 / 0.875.
    assert expected_value({0: 0.5, 5: 0.25, 10: 0.125}) == pytest.approx(2.5 / 0.875)
    assert expected_value({7: 1e-9}) == pytest.approx(7.0)
    assert expected_value({}) is None
    assert expected_value({3: 0.0}) is None


def test_mean_defined_skips_none() -> None:
    assert mean_defined([0.5, None, 1.0]) == pytest.approx(0.75)
    assert mean_defined([None, None]) is None
    assert mean_defined([]) is None
