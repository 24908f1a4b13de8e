"""REST bodies of queued jobs: the typed parameters of each kind, and a job's state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.core.schemas import NO_NUL, StrictBody, no_nul
from app.core.tables import JobStatus
from trainer.lm.site_names import Site
from trainer.saes import registry
from trainer.saes.config import MAX_D_SAE
from trainer.training.config import Recipe


def _registered_architecture(name: str) -> str:
    """An architecture of trainer.saes.registry; otherwise a 422 naming the registered ones."""
    return registry.get(name).name


Architecture = Annotated[str, AfterValidator(_registered_architecture)]


class JobCreated(BaseModel):
    id: int
    status: str


class JobOut(BaseModel):
    id: int
    kind: str
    params: dict[str, Any]
    status: JobStatus
    progress: float
    message: str
    metrics: list[dict[str, Any]]
    result: dict[str, Any]
    error: str | None
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class TrainJobParams(StrictBody):
    """A training job: the same choices as `jumpscope train`, then registration (and optionally indexing)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$", description="Name to register the SAE under.")
    model: str = Field("gemma3-270m", min_length=1, max_length=500, pattern=NO_NUL)
    layer: int | None = Field(None, ge=0, le=1000)
    site: Site = "resid"
    dataset: str | None = Field(None, min_length=1, max_length=1000, pattern=NO_NUL)
    activations: str | None = Field(
        None, min_length=1, max_length=1000, pattern=NO_NUL, description="Cached shards instead."
    )
    architecture: Architecture = Field("jumprelu", json_schema_extra={"enum": list(registry.names())})
    width: int = Field(4096, ge=16, le=1 << 20)
    l0_coeff: float | None = Field(None, gt=0, le=100)
    l1_coeff: float | None = Field(None, gt=0, le=100)
    k: int = Field(32, ge=1, le=4096)
    tokens: int = Field(1_000_000, ge=4096, le=100_000_000_000)
    batch_size: int = Field(4096, ge=16, le=1 << 20)
    recipe: Recipe = "short"
    context_size: int | None = Field(None, ge=8, le=8192)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    index_tokens: int = Field(0, ge=0, le=1_000_000_000, description="Index this many tokens afterwards (0 = no).")
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Steps between checkpoints.")

    @model_validator(mode="after")
    def _check(self) -> TrainJobParams:
        no_nul(self.model_dump(), "params")
        return self


class IndexJobParams(StrictBody):
    """An indexing job: the same choices as `jumpscope index`."""

    model_config = ConfigDict(extra="forbid")

    sae: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    tokens: int = Field(1_000_000, ge=1, le=1_000_000_000)
    dataset: str | None = Field(None, min_length=1, max_length=1000, pattern=NO_NUL)
    top_k: int = Field(20, ge=1, le=1000)
    window: int = Field(64, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self) -> IndexJobParams:
        no_nul(self.model_dump(), "params")
        return self


class ExplainJobParams(StrictBody):
    """An explain job: the same choices as `jumpscope explain` (either features or sample)."""

    model_config = ConfigDict(extra="forbid")

    sae: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    features: list[Annotated[int, Field(ge=0, le=MAX_D_SAE)]] | None = Field(
        None, min_length=1, max_length=100_000, description="Features to explain (or give sample)."
    )
    sample: int | None = Field(None, ge=1, le=1_000_000, description="Explain this many live features at random.")
    llm: str | None = Field(
        None, min_length=1, max_length=1000, pattern=NO_NUL,
        description="None: the offline default; a Hub id or a model folder inside JUMPSCOPE_DATASETS_DIR; or the "
        "worker's JUMPSCOPE_LLM_URL (no other URL).",
    )  # fmt: skip
    llm_model: str | None = Field(
        None, min_length=1, max_length=200, pattern=NO_NUL, description="The model the llm endpoint serves."
    )
    baseline: Literal["random"] | None = Field(None, description="Also explain a random-init SAE of the same shape.")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self) -> ExplainJobParams:
        no_nul(self.model_dump(), "params")
        if (self.features is None) == (self.sample is None):
            raise ValueError("give either features or sample")
        return self


class TrainJobIn(StrictBody):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"]
    params: TrainJobParams


class IndexJobIn(StrictBody):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["index"]
    params: IndexJobParams


class ExplainJobIn(StrictBody):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["explain"]
    params: ExplainJobParams


JobIn = Annotated[TrainJobIn | IndexJobIn | ExplainJobIn, Field(discriminator="kind")]
