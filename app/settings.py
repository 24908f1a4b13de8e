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
