"""Configuration from the environment (prefix JUMPSCOPE_, plus the conventional DATABASE_URL)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
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
    worker_url: str | None = Field(
        None,
        description="Base URL of a `jumpscope worker` that encodes (e.g. http://gpu-box:8001); unset = encode "
        "in the web server process.",
    )
    max_loaded_saes: int = Field(2, ge=1, description="SAEs (with their models) the encoder keeps loaded (LRU).")
    encode_max_tokens: int = Field(1024, ge=1, description="Tokens per text an encode request may hold.")
    encode_window_ms: float = Field(10.0, ge=0, description="How long the encoder collects requests into a batch.")
    encode_max_batch: int = Field(32, ge=1, description="Texts per encoder forward pass.")
    encode_batching: bool = Field(True, description="Batch concurrent encode requests together.")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    device: str = Field("auto", description="auto, cpu or cuda for the encoder and jobs.")
