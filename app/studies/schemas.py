"""REST bodies of rating studies' results (the paper's Fig. 6), read from app.studies.results' dataclasses."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from app.core.tables import RatingLabel


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, use_attribute_docstrings=True)


class StudySummary(_Out):
    """A study at a glance."""

    name: str
    """The study name its ratings carry."""
    ratings: int
    features: int
    """Distinct (SAE, feature index) pairs rated."""
    raters: int
    saes: list[str]
    """The rated SAEs, sorted by name."""
    architectures: list[str]
    """Their architectures, each once."""
    blinded: bool
    """Some ratings were made blinded (the rater did not see the SAE)."""
    first_rated_at: datetime
    last_rated_at: datetime
    """When the last rating was made or edited."""


class AgreementOut(_Out):
    """Krippendorff's alpha over the features that two or more raters rated."""

    features: int
    """Features rated by two or more raters: the units alpha is computed over."""
    ratings: int
    """The ratings of those features."""
    nominal: float | None
    """Alpha with yes / maybe / no as unordered categories; null where undefined (see `reason`)."""
    ordinal: float | None
    """Ordinal alpha, no < maybe < yes; null where undefined (see `reason`)."""
    reason: str | None
    """Why alpha is undefined (no feature rated twice, or no variation); null when it is defined."""


class LabelShareOut(_Out):
    """How often one label was given, of a group's ratings, with its 95% Wilson score interval."""

    label: RatingLabel
    count: int
    share: float
    """count / the group's ratings."""
    low: float
    """Lower end of the 95% Wilson score interval of the share."""
    high: float
    """Upper end of the 95% Wilson score interval of the share."""


class GroupOut(_Out):
    """The ratings of one SAE, or of all SAEs of one architecture."""

    name: str
    """The SAE's name, or the architecture."""
    architecture: str
    saes: list[str]
    """The SAEs in the group."""
    ratings: int
    features: int
    """Distinct features rated."""
    raters: int
    shares: list[LabelShareOut]
    """yes, maybe and no, in that order."""
    agreement: AgreementOut


class VerdictOut(_Out):
    """One rater's answer on one feature."""

    rater: str
    label: RatingLabel
    note: str


class MachineVerdictOut(_Out):
    """A feature's latest automated explanation (app.interp) and its scores."""

    explanation: str
    llm: str
    """The explaining LLM."""
    scores: dict[str, float | None]
    """simulation, detection, fuzzing -> score; null where not computed or undefined."""


class ScoreAUCOut(_Out):
    """How well one automated score predicts a person's "yes" on the study's features."""

    score: str
    """simulation, detection or fuzzing."""
    auc: float | None
    """The chance that a rating of "yes" has a higher score than one of "maybe" or "no" (ties count half); each
    rating is one observation carrying its feature's score. Null without both kinds of rating."""
    features: int
    """Rated features with this score."""
    ratings: int
    """Their ratings (the observations)."""
    yes: int
    """How many of those ratings are "yes"."""


class FeatureVerdictsOut(_Out):
    """One rated feature, unblinded."""

    sae: str
    architecture: str
    index: int
    """The feature's index in its SAE."""
    verdicts: list[VerdictOut]
    """Every rater's answer, by rater name."""
    machine: MachineVerdictOut | None
    """The latest automated explanation and its scores; null when the feature has none."""


class StudyOut(_Out):
    """A study's results: per SAE and per architecture, agreement, and the unblinded list of features."""

    study: str
    ratings: int
    features: int
    """Distinct (SAE, feature index) pairs rated."""
    raters: list[str]
    """Every rater's name."""
    blinded: bool
    """Some ratings were made blinded."""
    by_sae: list[GroupOut]
    by_architecture: list[GroupOut]
    agreement: AgreementOut
    """Over the whole study."""
    features_list: list[FeatureVerdictsOut]
    """Every rated feature with each rater's label and note, by SAE and index."""
    explained: int
    """Rated features that have an automated explanation."""
    machine: list[ScoreAUCOut]
    """Humans against the machine: per automated score, the AUC of it predicting a "yes"."""


class StudyRatingOut(_Out):
    """One rating of a study, unblinded (a row of the CSV and JSON downloads)."""

    study: str
    sae: str
    architecture: str
    feature_index: int
    rater: str
    label: RatingLabel
    note: str
    blinded: bool
    """The rater did not see which SAE the feature came from."""
    presentation_order: int | None
    """The feature's position in the rater's queue."""
    time_spent_ms: int | None
    """Time from showing the feature to the rating, when the page measured it."""
    created_at: datetime
    updated_at: datetime
    explanation: str | None = None
    """The feature's latest automated explanation (app.interp), if any."""
    simulation: float | None = None
    """Its simulation score (Pearson correlation of simulated and true activations)."""
    detection: float | None = None
    """Its detection score (balanced accuracy)."""
    fuzzing: float | None = None
    """Its fuzzing score (balanced accuracy)."""
