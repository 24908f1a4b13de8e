"""The results of a rating study: the paper's Fig. 6 numbers, inter-rater agreement and the unblinded list.

- Per SAE and per architecture: counts and shares of yes / maybe / no, each with a 95% Wilson score
  interval (scipy's binomtest), and how many features and raters.
- Agreement: Krippendorff's alpha (the `krippendorff` package), nominal and ordinal (no < maybe <
  yes), over the features that two or more raters rated; None where it is undefined, with why.
- Humans against the machine: per feature the human verdicts next to its latest automated
  explanation and scores (app.interp), and per score the AUC of the score predicting a "yes"
  (`auc`: the Mann-Whitney statistic, ties counting half; `humans_against_machine`).

Everything here is plain maths over plain values except `study_results`, the one function that
reads the store (through app.studies.queries).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from app.studies.queries import MachineVerdict, RatingRow, machine_verdicts, rating_rows

ORDINAL: tuple[str, ...] = ("no", "maybe", "yes")
"""The labels from worst to best: the order of the ordinal alpha."""
SHOWN: tuple[str, ...] = ("yes", "maybe", "no")
"""The order tables, charts and downloads list the labels in."""
CONFIDENCE = 0.95
"""The confidence level of every interval."""

AlphaLevel = Literal["nominal", "ordinal"]


# --- maths ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a proportion."""

    low: float
    high: float


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of the proportion successes / trials; None when there are no trials."""
    if trials == 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and trials ({trials}), got {successes}")
    from scipy.stats import binomtest  # scipy.stats takes about a second to import: only when first needed

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high))


def krippendorff_alpha(
    units: Sequence[Sequence[Hashable]], domain: Sequence[Hashable], level: AlphaLevel
) -> float | None:
    """Krippendorff's alpha of the values each unit got (missing values simply left out) over the ordered `domain`.

    None where alpha is undefined: no unit has two values, or all pairable values are the same value
    (no variation, so no disagreement expected by chance to compare with).
    """
    import krippendorff

    column = {value: i for i, value in enumerate(domain)}
    counts = np.zeros((len(units), len(domain)), dtype=np.int64)  # (units, values): coders per value per unit
    for u, values in enumerate(units):
        for value in values:
            if value not in column:
                raise ValueError(f"{value!r} is not one of {list(domain)}")
            counts[u, column[value]] += 1
    pairable = counts[counts.sum(axis=1) >= 2]  # (pairable units, values)
    if len(pairable) == 0 or np.count_nonzero(pairable.sum(axis=0)) < 2:
        return None
    # Values as their ranks 0..V-1: the ordinal metric reads only ranks and the value frequencies.
    value = krippendorff.alpha(value_counts=pairable, value_domain=np.arange(len(domain)), level_of_measurement=level)
    return float(value)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve of `scores` predicting `labels`: the chance that a random positive scores
    higher than a random negative, ties counting half (the Mann-Whitney U over n_pos * n_neg).

    None without at least one positive and one negative.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if any(not math.isfinite(s) for s in scores):
        raise ValueError("scores must be finite numbers")
    positives = sum(1 for label in labels if label)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    # Mid-ranks (1-based; tied scores share the mean of their ranks), then U of the positives.
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    u = rank_sum - positives * (positives + 1) / 2
    return u / (positives * negatives)


# --- a study's numbers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Krippendorff's alpha over the features that two or more raters rated."""

    features: int
    """Features rated by two or more raters (the units alpha is computed over)."""
    ratings: int
    """The ratings of those features."""
    nominal: float | None
    """Alpha with yes / maybe / no as unordered categories; None where undefined (see `reason`)."""
    ordinal: float | None
    """Alpha with no < maybe < yes; None where undefined (see `reason`)."""
    reason: str | None
    """Why alpha is undefined; None when it is defined."""


def agreement(units: Sequence[Sequence[str]]) -> Agreement:
    """Alpha (nominal and ordinal) over the labels of each feature; features with fewer than two ratings drop out."""
    shared = [labels for labels in units if len(labels) >= 2]
    ratings = sum(len(labels) for labels in shared)
    nominal = krippendorff_alpha(shared, ORDINAL, "nominal")
    ordinal = krippendorff_alpha(shared, ORDINAL, "ordinal")
    reason = None
    if not shared:
        reason = "no feature was rated by two or more raters, so there is no agreement to measure"
    elif nominal is None:
        [label] = {label for labels in shared for label in labels}
        reason = (
            f"all {ratings} ratings of the {len(shared)} features rated by two or more raters are '{label}': "
            "with no variation, agreement beyond chance is undefined"
        )
    return Agreement(features=len(shared), ratings=ratings, nominal=nominal, ordinal=ordinal, reason=reason)


@dataclass(frozen=True)
class LabelShare:
    """How often one label was given, of all the ratings of a group."""

    label: str
    count: int
    share: float
    """count / ratings of the group."""
    low: float
    """Lower end of the 95% Wilson score interval of the share."""
    high: float
    """Upper end of the 95% Wilson score interval of the share."""


@dataclass(frozen=True)
class Verdict:
    """One rater's answer on one feature."""

    rater: str
    label: str
    note: str


@dataclass(frozen=True)
class FeatureVerdicts:
    """One rated feature, unblinded: its SAE and index, and every rater's answer."""

    sae: str
    architecture: str
    index: int
    verdicts: list[Verdict]
    """By rater name."""
    machine: MachineVerdict | None = None
    """The feature's latest automated explanation and scores, if it has one."""


@dataclass(frozen=True)
class GroupResult:
    """The ratings of one SAE, or of every SAE of one architecture, in a study."""

    name: str
    """The SAE's name, or the architecture."""
    architecture: str
    saes: list[str]
    """The SAEs in the group (one for an SAE's group)."""
    ratings: int
    features: int
    raters: int
    shares: list[LabelShare]
    """yes, maybe, no, in that order."""
    agreement: Agreement


@dataclass(frozen=True)
class ScoreAUC:
    """How well one automated score predicts that a person says "yes" about a feature."""

    score: str
    """The score's name (simulation, detection, fuzzing)."""
    auc: float | None
    """AUC over the ratings of features with this score (see humans_against_machine); None without both a
    "yes" and another answer among them."""
    features: int
    """Rated features that have this score."""
    ratings: int
    """Their ratings: the observations."""
    yes: int
    """How many of those ratings are "yes"."""


@dataclass(frozen=True)
class StudyResults:
    """Everything the study page and its API show."""

    study: str
    ratings: int
    features: int
    raters: list[str]
    """Every rater's name, sorted."""
    blinded: bool
    """Some ratings were made blinded."""
    by_sae: list[GroupResult]
    by_architecture: list[GroupResult]
    agreement: Agreement
    """Over the whole study."""
    features_list: list[FeatureVerdicts]
    """The unblinded list: every rated feature, by SAE and index."""
    rows: list[RatingRow]
    """One per rating (the downloads)."""
    explained: int = 0
    """Rated features that have an automated explanation."""
    machine: list[ScoreAUC] = field(default_factory=list)
    """Per automated score, how well it predicts a "yes" on the study's features (humans against the machine)."""


def _shares(labels: Sequence[str]) -> list[LabelShare]:
    counts = Counter(labels)
    n = len(labels)
    out = []
    for label in SHOWN:
        interval = wilson_interval(counts[label], n) or Interval(0.0, 1.0)
        out.append(LabelShare(label, counts[label], counts[label] / n if n else 0.0, interval.low, interval.high))
    return out


def _group(name: str, architecture: str, rows: Sequence[RatingRow]) -> GroupResult:
    units: dict[tuple[str, int], list[str]] = {}
    for row in rows:
        units.setdefault((row.sae, row.feature_index), []).append(row.label)
    return GroupResult(
        name=name, architecture=architecture, saes=sorted({row.sae for row in rows}), ratings=len(rows),
        features=len(units), raters=len({row.rater for row in rows}), shares=_shares([row.label for row in rows]),
        agreement=agreement(list(units.values())),
    )  # fmt: skip


def summarise(
    study: str, rows: Sequence[RatingRow], machine: Mapping[tuple[str, int], MachineVerdict] | None = None
) -> StudyResults:
    """The results of a study from its ratings (one row per rating) and its features' automated verdicts."""
    machine = machine or {}
    by_sae: dict[str, list[RatingRow]] = {}
    by_arch: dict[str, list[RatingRow]] = {}
    features: dict[tuple[str, int], list[RatingRow]] = {}
    for row in rows:
        by_sae.setdefault(row.sae, []).append(row)
        by_arch.setdefault(row.architecture, []).append(row)
        features.setdefault((row.sae, row.feature_index), []).append(row)
    verdicts = [
        FeatureVerdicts(sae, group[0].architecture, index,
                        [Verdict(r.rater, r.label, r.note) for r in sorted(group, key=lambda r: r.rater)],
                        machine.get((sae, index)))
        for (sae, index), group in sorted(features.items())
    ]  # fmt: skip
    return StudyResults(
        study=study, ratings=len(rows), features=len(features), raters=sorted({row.rater for row in rows}),
        blinded=any(row.blinded for row in rows),
        by_sae=[_group(name, group[0].architecture, group) for name, group in sorted(by_sae.items())],
        by_architecture=[_group(arch, arch, group) for arch, group in sorted(by_arch.items())],
        agreement=agreement([[row.label for row in group] for group in features.values()]),
        features_list=verdicts, rows=list(rows), explained=sum(1 for f in verdicts if f.machine is not None),
        machine=humans_against_machine(verdicts, {key: m.scores for key, m in machine.items()}),
    )  # fmt: skip


def humans_against_machine(
    features: Iterable[FeatureVerdicts], scores: Mapping[tuple[str, int], Mapping[str, float | None]]
) -> list[ScoreAUC]:
    """Per automated score, how well it predicts a person's "yes", on the study's features.

    `scores` maps (SAE name, feature index) to that feature's scores by name (a missing or None
    score leaves the feature out of that score's count). Each rating is one observation: its
    feature's score, and whether the rater said "yes"; so a feature that raters disagree on counts
    on both sides, as often as it got each answer.
    """
    observed: dict[str, tuple[list[float], list[bool], set[tuple[str, int]]]] = {}
    for feature in features:
        key = (feature.sae, feature.index)
        for name, value in scores.get(key, {}).items():
            if value is None or not math.isfinite(value):
                continue
            values, labels, keys = observed.setdefault(name, ([], [], set()))
            keys.add(key)
            for verdict in feature.verdicts:
                values.append(value)
                labels.append(verdict.label == "yes")
    return [
        ScoreAUC(score=name, auc=auc(values, labels), features=len(keys), ratings=len(labels), yes=sum(labels))
        for name, (values, labels, keys) in sorted(observed.items())
    ]


def study_results(session: Session, study: str) -> StudyResults | None:
    """The results of `study` from the store; None when no rating carries that study name."""
    rows = rating_rows(session, study)
    if not rows:
        return None
    return summarise(study, rows, machine_verdicts(session, {(row.sae, row.feature_index) for row in rows}))
