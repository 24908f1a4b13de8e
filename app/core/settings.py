"""Configuration from the environment (prefix JUMPSCOPE_, plus the conventional DATABASE_URL).

README, "Security model", says which of these a public deployment must set.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///jumpscope.db"


class Settings(BaseSettings):
    """Settings shared by the command line, the server and the worker."""

    model_config = SettingsConfigDict(env_prefix="JUMPSCOPE_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("JUMPSCOPE_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL of the store: a SQLite file (default, in the working directory) or Postgres "
        "(postgresql://user@host/db; the psycopg 3 driver is used).",
    )
    data_dir: Path = Field(
        Path("jumpscope-data"),
        description="Where imported SAE weights are kept (native folders under data_dir/saes/NAME); the database "
        "holds their location.",
    )
    runs_dir: Path = Field(Path("runs/jobs"), description="Where queued jobs write their outputs and checkpoints.")
    datasets_dir: Path | None = Field(
        None,
        description="The only local folder a queued job may read text datasets and activation caches from "
        "(hub dataset names stay allowed); unset = queued jobs may use hub names only.",
    )
    worker_url: str | None = Field(
        None,
        description="Base URL of a `jumpscope worker` that encodes (e.g. http://gpu-box:8001); unset = encode "
        "in the web server process.",
    )
    worker_token: SecretStr | None = Field(
        None,
        description="Shared secret between the web server and `jumpscope worker`: when set, the worker refuses "
        "any caller without it (401/403) and the web server sends it.",
    )
    max_loaded_saes: int = Field(2, ge=1, description="SAEs (with their models) the encoder keeps loaded (LRU).")
    encode_max_tokens: int = Field(1024, ge=1, description="Tokens per text an encode request may hold.")
    encode_window_ms: float = Field(10.0, ge=0, description="How long the encoder collects requests into a batch.")
    encode_max_batch: int = Field(32, ge=1, description="Texts per encoder forward pass.")
    encode_batching: bool = Field(True, description="Batch concurrent encode requests together.")
    encode_max_values: int = Field(
        500_000,
        ge=1,
        description="Values one encode reply may hold: over all texts, tokens x active features returned plus "
        "tokens x `features` asked for densely. A larger request gets 422 (ask for top_k or fewer texts).",
    )
    encode_max_concurrent: int = Field(
        2, ge=1, description="Encode requests this process works on at once; further ones wait their turn."
    )
    encode_max_waiting: int = Field(
        32, ge=0, description="Encode requests that may wait for a turn; beyond that the server answers 429."
    )
    encode_requires_token: bool = Field(
        False,
        description="Encoding (the expensive endpoints) needs a valid bearer token (any rater's), while "
        "reading stays open.",
    )
    encode_rate_limit: str = Field(
        "",
        description="Encode requests per token (or per client address without one), in the `limits` notation "
        "('120/minute', '10/second;500/hour'); '' (the default) = no limit. A public deployment sets one.",
    )

    @field_validator("encode_rate_limit")
    @classmethod
    def _rate_limit(cls, spec: str) -> str:
        from limits import parse_many

        if spec.strip():
            try:
                parse_many(spec)
            except ValueError as err:
                raise ValueError(
                    f"{spec!r} is not a rate limit: write e.g. '120/minute' or '10/second;500/hour'"
                ) from err
        return spec

    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate-limit counters live (a `limits` storage URI): memory:// counts per process; "
        "redis://host:6379 shares them between several `serve --workers` processes.",
    )
    job_max_tokens: int = Field(
        2_000_000_000, ge=1, description="Tokens a queued training or indexing job may ask for."
    )
    job_max_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="Memory a queued job may need by its estimate (SAE weights, optimiser state and a batch "
        "of activations); unset = this machine's physical memory.",
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    device: str = Field("auto", description="auto, cpu or cuda for the encoder and jobs.")
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key of the OpenAI-compatible endpoint that `jumpscope explain --llm http(s)://...` uses, "
        "sent as a Bearer token; never logged or shown.",
    )
    llm_concurrency: int = Field(4, ge=1, description="Requests in flight at once to an OpenAI-compatible LLM.")
    llm_timeout_s: float = Field(60.0, gt=0, description="Seconds one LLM request may take before it is retried.")
    llm_max_retries: int = Field(
        4, ge=0, description="Further attempts after a connect error, timeout, 429 or 5xx of an LLM endpoint."
    )
    llm_url: str | None = Field(
        None,
        description="The one OpenAI-compatible endpoint (base URL, e.g. http://gpu-box:8080/v1) that queued explain "
        "jobs may name as their `llm` (the API key is sent there); unset = jobs use in-process models only.",
    )
