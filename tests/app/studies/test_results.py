"""The maths of study results against published and hand-computed values: Wilson score intervals (Newcombe
1998), Krippendorff's alpha (Krippendorff's own worked example, and a yes / maybe / no case by hand), the
AUC with ties (the Mann-Whitney statistic), humans against the machine, a study's summary and its plot."""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from app.studies.chart import COLOURS, shares_svg
from app.studies.queries import RatingRow
from app.studies.results import (
    FeatureVerdicts,
    Verdict,
    agreement,
    auc,
    humans_against_machine,
    krippendorff_alpha,
    summarise,
    wilson_interval,
)

# --- Wilson score interval --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17, Table I,
    # method 3 (score interval without continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombes_table(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, trials)
    assert interval is not None
    assert round(interval.low, 4) == low and round(interval.high, 4) == high


def wilson_by_formula(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The textbook formula: (k + z²/2 ± z sqrt(k (n - k) / n + z²/4)) / (n + z²)."""
    centre, half = k + z * z / 2, z * math.sqrt(k * (n - k) / n + z * z / 4)
    return (centre - half) / (n + z * z), (centre + half) / (n + z * z)


def test_wilson_interval_is_the_textbook_formula_and_contains_the_share() -> None:
    for k, n in [(4, 6), (3, 3), (1, 2), (7, 19)]:
        interval = wilson_interval(k, n)
        assert interval is not None
        low, high = wilson_by_formula(k, n)
        assert interval.low == pytest.approx(low, abs=1e-9) and interval.high == pytest.approx(high, abs=1e-9)
        assert interval.low <= k / n <= interval.high


def test_wilson_interval_without_trials_is_none_and_bad_counts_are_refused() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="between 0 and trials"):
        wilson_interval(5, 3)


# --- Krippendorff's alpha ---------------------------------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four observers, twelve
# units, values 1-5, missing values (None). Published: nominal alpha = 0.743; ordinal 0.815.
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
UNITS = [[row[u] for row in OBSERVERS if row[u] is not None] for u in range(12)]


def test_krippendorffs_worked_example() -> None:
    assert round(krippendorff_alpha(UNITS, [1, 2, 3, 4, 5], "nominal") or 0, 3) == 0.743
    assert round(krippendorff_alpha(UNITS, [1, 2, 3, 4, 5], "ordinal") or 0, 3) == 0.815


def test_alpha_of_yes_maybe_no_by_hand() -> None:
    # Units [yes, yes], [yes, maybe], [no, no], [maybe] (the last has one value: not pairable).
    # n_yes = 3, n_maybe = 1, n_no = 2, n = 6; observed coincidences o(yes, maybe) = o(maybe, yes) = 1.
    # Nominal: 1 - (n - 1) * 2 / sum_{c != k} n_c n_k = 1 - 5 * 2 / 22 = 6/11.
    # Ordinal (no < maybe < yes): delta(maybe, yes) = (1 + 3 - 2)^2 = 4, delta(no, maybe) = (2 + 1 - 1.5)^2 = 2.25,
    # delta(no, yes) = (2 + 1 + 3 - 2.5)^2 = 12.25; 1 - 5 * (2 * 4) / (2 * (2*1*2.25 + 1*3*4 + 2*3*12.25)) = 7/9.
    units = [["yes", "yes"], ["yes", "maybe"], ["no", "no"], ["maybe"]]
    result = agreement(units)
    assert result.nominal == pytest.approx(6 / 11) and result.ordinal == pytest.approx(7 / 9)
    assert (result.features, result.ratings, result.reason) == (3, 6, None)


def test_alpha_is_one_for_perfect_agreement_and_negative_for_systematic_disagreement() -> None:
    assert agreement([["yes", "yes"], ["no", "no"], ["maybe", "maybe", "maybe"]]).nominal == pytest.approx(1.0)
    opposite = agreement([["yes", "no"], ["no", "yes"]])
    assert opposite.nominal is not None and opposite.nominal < 0
    assert opposite.ordinal is not None and opposite.ordinal < 0


def test_alpha_undefined_says_why() -> None:
    lonely = agreement([["yes"], ["no"], ["maybe"]])
    assert lonely.nominal is None and lonely.ordinal is None and lonely.features == 0
    assert lonely.reason is not None and "two or more raters" in lonely.reason
    same = agreement([["yes", "yes"], ["yes", "yes", "yes"], ["no"]])
    assert same.nominal is None and same.ordinal is None and (same.features, same.ratings) == (2, 5)
    assert same.reason is not None and "'yes'" in same.reason and "no variation" in same.reason
    with pytest.raises(ValueError, match="not one of"):
        krippendorff_alpha([["yes", "perhaps"]], ["no", "maybe", "yes"], "nominal")


# --- AUC --------------------------------------------------------------------------------------------------------------


def test_auc_with_ties_by_hand() -> None:
    # Positives score 2 and 3, negatives 1 and 2: pairs (2>1) 1, (2=2) 1/2, (3>1) 1, (3>2) 1 -> 3.5 / 4.
    assert auc([1, 2, 2, 3], [False, True, False, True]) == pytest.approx(0.875)
    assert auc([0.5] * 5, [True, False, True, False, False]) == pytest.approx(0.5)  # all tied: chance
    assert auc([1, 2, 3, 4], [False, False, True, True]) == pytest.approx(1.0)
    assert auc([1, 2, 3, 4], [True, True, False, False]) == pytest.approx(0.0)


def test_auc_is_the_mann_whitney_statistic() -> None:
    from scipy.stats import mannwhitneyu

    rng = random.Random(1)
    scores = [float(rng.randint(0, 5)) for _ in range(60)]  # many ties
    labels = [rng.random() < 0.4 for _ in range(60)]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    u = mannwhitneyu(pos, neg).statistic
    assert auc(scores, labels) == pytest.approx(u / (len(pos) * len(neg)))


def test_auc_needs_both_classes_and_finite_scores() -> None:
    assert auc([1.0, 2.0], [True, True]) is None
    assert auc([], []) is None
    with pytest.raises(ValueError, match="finite"):
        auc([1.0, math.nan], [True, False])
    with pytest.raises(ValueError, match="labels"):
        auc([1.0], [True, False])


def test_humans_against_machine_counts_each_rating() -> None:
    features = [
        FeatureVerdicts("a", "jumprelu", 0, [Verdict("x", "yes", ""), Verdict("y", "yes", "")]),
        FeatureVerdicts("a", "jumprelu", 1, [Verdict("x", "no", ""), Verdict("y", "yes", "")]),
        FeatureVerdicts("a", "jumprelu", 2, [Verdict("x", "maybe", "")]),
        FeatureVerdicts("b", "topk", 0, [Verdict("x", "no", "")]),  # no scores at all
    ]
    scores = {("a", 0): {"simulation": 0.9, "detection": 0.5}, ("a", 1): {"simulation": 0.4, "detection": None},
              ("a", 2): {"simulation": 0.1, "detection": 0.7}}  # fmt: skip
    by_name = {s.score: s for s in humans_against_machine(features, scores)}
    # simulation: yes at 0.9, 0.9, 0.4; not yes at 0.4, 0.1 -> pairs: 0.9 beats both (4), 0.4 ties 0.4 (1/2),
    # 0.4 beats 0.1 (1): 5.5 / 6.
    sim = by_name["simulation"]
    assert (sim.features, sim.ratings, sim.yes) == (3, 5, 3) and sim.auc == pytest.approx(5.5 / 6)
    det = by_name["detection"]  # feature 1's detection score is missing: yes at 0.5, 0.5; not yes at 0.7
    assert (det.features, det.ratings, det.yes) == (2, 3, 2) and det.auc == pytest.approx(0.0)


# --- a study's summary and its plot -----------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(sae: str, arch: str, index: int, rater: str, label: str, note: str = "") -> RatingRow:
    return RatingRow("s", sae, arch, index, rater, label, note, True, None, None, NOW, NOW)


def test_summarise_groups_by_sae_and_architecture() -> None:
    rows = [row("a", "jumprelu", 0, "x", "yes"), row("a", "jumprelu", 0, "y", "yes"),
            row("a", "jumprelu", 1, "x", "no", "dead"), row("b", "jumprelu", 0, "x", "maybe"),
            row("c", "topk", 3, "y", "no")]  # fmt: skip
    results = summarise("s", rows)
    assert (results.ratings, results.features, results.raters, results.blinded) == (5, 4, ["x", "y"], True)
    assert [g.name for g in results.by_sae] == ["a", "b", "c"]
    [jump, topk] = results.by_architecture
    assert (jump.name, jump.saes, jump.ratings, jump.features, jump.raters) == ("jumprelu", ["a", "b"], 4, 3, 2)
    assert [(s.label, s.count) for s in jump.shares] == [("yes", 2), ("maybe", 1), ("no", 1)]
    assert jump.shares[0].share == 0.5 and (jump.shares[0].low, jump.shares[0].high) == pytest.approx(
        wilson_by_formula(2, 4)
    )
    assert (topk.saes, topk.ratings, [s.count for s in topk.shares]) == (["c"], 1, [0, 0, 1])
    first = results.features_list[0]
    verdicts = [(v.rater, v.label) for v in first.verdicts]
    assert (first.sae, first.index, verdicts) == ("a", 0, [("x", "yes"), ("y", "yes")])
    assert results.features_list[1].verdicts[0].note == "dead"


def test_shares_svg_draws_a_bar_and_an_error_bar_per_label() -> None:
    results = summarise("s", [row("a<&>", "jumprelu", 0, "x", "yes"), row("a<&>", "jumprelu", 1, "x", "no"),
                              row("b", "topk", 0, "x", "maybe")])  # fmt: skip
    svg = str(shares_svg(results.by_sae, "Answers per SAE"))
    root = ET.fromstring(svg)  # well-formed: names are escaped
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = [r for r in root.iterfind(".//s:g/s:rect", ns)]
    assert len(bars) == 6 and {b.get("fill") for b in bars} == set(COLOURS.values())
    titles = [t.text or "" for t in root.iterfind(".//s:g/s:title", ns)]
    assert "a<&>: yes 1 of 2 (50%, 95% interval 9% to 91%)" in titles
    heights = {t.split(":")[0] + t.split(":")[1].split()[0]: float(b.get("height") or 0) for t, b in
               zip(titles, bars, strict=True)}  # fmt: skip
    assert heights["byes"] == 0 and heights["bmaybe"] > heights["a<&>yes"] > 0
    assert len(root.findall(".//s:g/s:line", ns)) == 6 * 3  # each error bar: a stem and two caps
    assert "no ratings yet" in str(shares_svg([], "Answers per SAE"))
