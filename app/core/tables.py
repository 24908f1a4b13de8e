"""The store's tables (SQLAlchemy 2 declarative). Alembic migrations in migrations/ create them.

An SAE's weights stay on disk in the native format; `saes.path` says where. Indexed statistics
belong to an `index_runs` row: the indexer fills a new run in batches and then, in one
transaction, points `saes.index_run_id` at it, so readers see the previous complete index or
the new one, never a half-written one. Ratings hang off (sae, feature index), not off an
index run, so re-indexing keeps them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid; Postgres gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# The store's enumerations, each defined once: the Literal types serve the API schemas and
# type checks, the tuples the CHECK constraints below.
RatingLabel = Literal["yes", "maybe", "no"]
RATING_LABELS: tuple[str, ...] = get_args(RatingLabel)
JobKind = Literal["train", "index", "explain"]
JOB_KINDS: tuple[str, ...] = get_args(JobKind)
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
"""A job in one of these may still change (a page showing it refreshes)."""
IndexStatus = Literal["building", "complete", "failed"]
INDEX_STATUSES: tuple[str, ...] = get_args(IndexStatus)
ExampleSplit = Literal["shown", "heldout"]
"""Which examples the pages show ("shown") and which only score explanations ("heldout": never shown to a
person or to the explaining LLM)."""
EXAMPLE_SPLITS: tuple[str, ...] = get_args(ExampleSplit)
ExplanationStatus = Literal["ok", "failed", "error"]
"""ok: explained (its scores may still be missing); failed: the LLM answered, but no explanation could be read
from the answer (kept with the raw text; a rerun skips it unless asked to retry); error: the LLM gave no
answer (unreachable, timed out; a rerun tries again)."""
EXPLANATION_STATUSES: tuple[str, ...] = get_args(ExplanationStatus)
ScoreKind = Literal["simulation", "detection", "fuzzing"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)
NOTE_MAX_CHARS = 2000
SNIPPET_SEPARATOR = " \u2026 "
"""Joins the top examples' snippets in `features.search_text`; the first snippet is the top example's."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it without the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONType, list[Any]: JSONType}


class Model(Base):
    """A language model SAEs read activations from."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, doc="'gemma3-270m', a hub id or a local folder.")
    n_layers: Mapped[int | None]
    d_model: Mapped[int | None]
    vocab_size: Mapped[int | None]
    vocab: Mapped[bytes | None] = deferred(
        mapped_column(LargeBinary, doc="gzip'd JSON list: the decoded text of every token id, for display.")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    saes: Mapped[list[SAERow]] = relationship(back_populates="model")


class SAERow(Base):
    """One registered SAE (its row; the torch module is trainer.saes.base.SAE), named by a URL-safe slug."""

    __tablename__ = "saes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    layer: Mapped[int | None]
    site: Mapped[str | None] = mapped_column(String(20))
    architecture: Mapped[str] = mapped_column(String(20))
    d_in: Mapped[int]
    d_sae: Mapped[int]
    path: Mapped[str] = mapped_column(String(1000), doc="The native SAE folder (cfg.json + sae.safetensors).")
    dtype: Mapped[str] = mapped_column(String(20), default="float32")
    normalization_scale: Mapped[float] = mapped_column(Float, default=1.0)
    context_size: Mapped[int | None]
    prepend_bos: Mapped[bool] = mapped_column(Boolean, default=True)
    dataset: Mapped[str | None] = mapped_column(String(1000))
    tokens_trained: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="Eval metrics (jumpscope eval --json).")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="The native cfg.json.")
    indexed_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    index_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("index_runs.id", ondelete="SET NULL", use_alter=True), doc="The current complete index."
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    model: Mapped[Model | None] = relationship(back_populates="saes")
    index_run: Mapped[IndexRun | None] = relationship(foreign_keys=[index_run_id], post_update=True)


class IndexRun(Base):
    """One indexing pass over an SAE; its features and examples become visible when it completes."""

    __tablename__ = "index_runs"
    __table_args__ = (CheckConstraint(f"status IN {INDEX_STATUSES!r}", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="building")
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, doc="Non-special tokens streamed.")
    dataset: Mapped[str | None] = mapped_column(String(1000))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="top_k, window, bands, bins, seed, ...")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, default=utcnow, doc="Touched while the run streams and writes; a stale building run is dead."
    )


class Feature(Base):
    """One latent of an indexed SAE with its precomputed statistics."""

    __tablename__ = "features"
    __table_args__ = (
        Index("ix_features_run_frequency", "run_id", "frequency"),
        Index("ix_features_run_max_activation", "run_id", "max_activation"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    fire_count: Mapped[int] = mapped_column(BigInteger)
    frequency: Mapped[float] = mapped_column(Float, doc="Firings per non-special token.")
    max_activation: Mapped[float] = mapped_column(Float)
    mean_activation: Mapped[float] = mapped_column(Float, doc="Mean over the tokens where it fires.")
    histogram: Mapped[dict[str, Any]] = mapped_column(doc='{"max": upper edge, "counts": [...]}: equal-width bins.')
    top_logits: Mapped[list[Any]] = mapped_column(doc="[[token_id, value], ...] decoder row times unembedding.")
    bottom_logits: Mapped[list[Any]] = mapped_column()
    similar: Mapped[list[Any]] = mapped_column(doc="[[feature index, decoder cosine], ...].")
    search_text: Mapped[str] = mapped_column(
        Text, default="", doc=f"Text of the top examples, for search: snippets joined by {SNIPPET_SEPARATOR!r}."
    )


class Example(Base):
    """One context window in which a feature fires: a top example (band -1) or a lower-band sample."""

    __tablename__ = "examples"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "feature_index"], ["features.run_id", "features.index"], ondelete="CASCADE"),
        Index("ix_examples_feature", "run_id", "feature_index", "band", "rank"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int]
    feature_index: Mapped[int]
    band: Mapped[int] = mapped_column(doc="-1 for the top examples, 0.. for the lower bands (0 is lowest).")
    rank: Mapped[int] = mapped_column(
        doc="Order within the band (top: by activation, bands: random); held-out ones continue the shown ranks."
    )
    token_ids: Mapped[bytes] = mapped_column(LargeBinary, doc="int32 little-endian token ids of the window.")
    values: Mapped[bytes] = mapped_column(LargeBinary, doc="float32 little-endian activation per window token.")
    max_value: Mapped[float] = mapped_column(Float)
    max_position: Mapped[int] = mapped_column(doc="Index of the max token within the window.")
    document: Mapped[str | None] = mapped_column(String(500), doc="Source document id.")
    band_min: Mapped[float | None] = mapped_column(Float)
    band_max: Mapped[float | None] = mapped_column(Float)
    split: Mapped[str] = mapped_column(
        String(10), default="shown", server_default="shown",
        doc="shown (pages, explanations) or heldout (only scores explanations: ExampleSplit).",
    )  # fmt: skip


class IndexContext(Base):
    """A random context window of an index run's stream and the features that fire in it.

    A feature's non-activating contexts are the windows whose `fired` list lacks it (its activation is 0 on
    every token there); explanations are scored on them (app.interp)."""

    __tablename__ = "index_contexts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(doc="Order in the reservoir (random).")
    token_ids: Mapped[bytes] = mapped_column(LargeBinary, doc="int32 little-endian token ids of the window.")
    fired: Mapped[bytes] = mapped_column(
        LargeBinary, doc="int32 little-endian, ascending: the features that fire on some token of the window."
    )
    document: Mapped[str | None] = mapped_column(String(500), doc="Source document id (of the middle token).")


class Explanation(Base):
    """An LLM's explanation of one feature (or a failed attempt), from the examples of an index run.

    One row per (SAE, feature, LLM, prompt version): a rerun of the same LLM and prompt skips what is stored
    (an `error` row is tried again and replaced). A random-init baseline SAE (`jumpscope explain --baseline
    random`) is an SAE row of its own (see app.interp.baseline), so its explanations hang off that row."""

    __tablename__ = "explanations"
    __table_args__ = (
        UniqueConstraint("sae_id", "feature_index", "llm", "prompt_version", name="uq_explanations_attempt"),
        CheckConstraint(f"status IN {EXPLANATION_STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("index_runs.id", ondelete="SET NULL"), index=True,
        doc="The index run whose examples were shown and scored (NULL once a re-index replaced it).",
    )  # fmt: skip
    feature_index: Mapped[int]
    text: Mapped[str | None] = mapped_column(Text, doc="The explanation; NULL for a failed attempt.")
    llm: Mapped[str] = mapped_column(String(300), doc="The explaining backend's name (ChatBackend.name).")
    prompt_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(10), doc="ok, failed or error (ExplanationStatus).")
    shown: Mapped[list[Any]] = mapped_column(default=list, doc="Ids of the examples the LLM was shown, in order.")
    raw: Mapped[str] = mapped_column(Text, default="", doc="The LLM's answer as written (bounded).")
    error: Mapped[str | None] = mapped_column(Text, doc="Why no explanation was read, or why the LLM failed.")
    seconds: Mapped[float] = mapped_column(Float, default=0.0, doc="Wall time to explain and score the feature.")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    scores: Mapped[list[ExplanationScore]] = relationship(
        back_populates="explanation", cascade="all, delete-orphan", lazy="selectin",
        order_by="ExplanationScore.kind", passive_deletes=True,
    )  # fmt: skip


class ExplanationScore(Base):
    """One score of an explanation on held-out examples: simulation, detection or fuzzing."""

    __tablename__ = "explanation_scores"
    __table_args__ = (
        UniqueConstraint("explanation_id", "kind", name="uq_explanation_scores_kind"),
        CheckConstraint(f"kind IN {SCORE_KINDS!r}", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20), doc="simulation, detection or fuzzing (ScoreKind).")
    score: Mapped[float | None] = mapped_column(Float, doc="NULL when undefined (nothing parsed, one class only).")
    n: Mapped[int] = mapped_column(default=0, doc="Items scored: tokens (simulation) or contexts.")
    failures: Mapped[int] = mapped_column(default=0, doc="LLM answers that could not be read.")
    scored: Mapped[dict[str, Any]] = mapped_column(
        default=dict, doc='{"examples": [example ids], "contexts": [index_contexts ids]}: what was scored.'
    )
    raw: Mapped[list[Any]] = mapped_column(default=list, doc="The LLM's answers, each and all bounded in size.")
    llm: Mapped[str] = mapped_column(String(300))
    prompt_version: Mapped[str] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text, doc="Why the score is missing, when the scorer itself failed.")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    explanation: Mapped[Explanation] = relationship(back_populates="scores")


class Rating(Base):
    """A person's judgement of one feature: is it interpretable?"""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("study_id", "rater", "sae_id", "feature_index", name="uq_ratings_study_rater_feature"),
        CheckConstraint(f"label IN {RATING_LABELS!r}", name="label"),
        Index("ix_ratings_sae_feature", "sae_id", "feature_index"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_index: Mapped[int]
    rater: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(10))
    note: Mapped[str] = mapped_column(String(NOTE_MAX_CHARS), default="")
    study_id: Mapped[str] = mapped_column(String(100), default="", doc="'' outside a study.")
    blinded: Mapped[bool] = mapped_column(Boolean, default=False)
    shown: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="What the rater saw (examples, order, ...).")
    presentation_order: Mapped[int | None]
    time_spent_ms: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Job(Base):
    """A queued training or indexing job, claimed and run by a worker."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"kind IN {JOB_KINDS!r}", name="kind"),
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="status"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0, doc="0..1")
    message: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[list[Any]] = mapped_column(default=list, doc="Training curve points so far.")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token: its holder writes as `name` (ratings), admins may also queue jobs and import."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True, doc="The rater name ratings are stored under.")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, doc="sha256 hex of the token; never the token.")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Sweep(Base):
    """A sparsity sweep (jumpscope sweep): SAEs of several architectures trained and evaluated alike."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    model: Mapped[str | None] = mapped_column(String(200))
    layer: Mapped[int | None]
    site: Mapped[str | None] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="trainer.sweep.grid.SweepConfig as JSON.")
    budget: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="Seconds per stage (harvest, train, eval, total).")
    plots: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="SVG text of each plot by name.")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    points: Mapped[list[SweepPointRow]] = relationship(
        back_populates="sweep", cascade="all, delete-orphan", order_by="SweepPointRow.id"
    )


class SweepPointRow(Base):
    """One SAE of a sweep: its architecture, knob value and held-out metrics."""

    __tablename__ = "sweep_points"
    __table_args__ = (UniqueConstraint("sweep_id", "architecture", "value", name="uq_sweep_points_point"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    sae_id: Mapped[int | None] = mapped_column(
        ForeignKey("saes.id", ondelete="SET NULL"), index=True, doc="The registered SAE (NULL once it is deleted)."
    )
    architecture: Mapped[str] = mapped_column(String(20))
    knob: Mapped[str] = mapped_column(String(20), doc="lambda or k")
    value: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)

    sweep: Mapped[Sweep] = relationship(back_populates="points")
    sae: Mapped[SAERow | None] = relationship()
