"""Shared test set-up: offline Hugging Face, deterministic seeds, small builders."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.saes.config import SAEConfig
from trainer.training.config import TrainConfig

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


def tiny_sae_cfg(**overrides: Any) -> SAEConfig:
    """A small SAEConfig for fast tests."""
    return SAEConfig(**{"d_in": 16, "d_sae": 48, **overrides})


def tiny_train_cfg(**overrides: Any) -> TrainConfig:
    """A small TrainConfig for fast tests (no warm-up surprises, no periodic checkpoint)."""
    base: dict[str, Any] = {
        "tokens": 256 * 20,
        "batch_size": 256,
        "lr": 1e-3,
        "lr_warmup_steps": 5,
        "sparsity_warmup_steps": 5,
        "norm_tokens": 1024,
        "checkpoint_every": 0,
        "log_every": 5,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random Gemma 2 and its offline tokenizer (built once)."""
    from trainer.lm.tiny_model import build_tiny_gemma2

    return build_tiny_gemma2(tmp_path_factory.mktemp("tiny-gemma2"))


def _postgres_url(schema: str) -> str:
    """TEST_DATABASE_URL with every connection's search_path set to `schema`."""
    from app.core.database import normalise_url

    base = normalise_url(os.environ["TEST_DATABASE_URL"])
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """An empty database URL: a SQLite file in folder, or a fresh schema on the Postgres of TEST_DATABASE_URL."""
    from sqlalchemy import text

    from app.core.database import dispose_all, make_engine

    if kind == "sqlite":
        try:
            yield f"sqlite:///{folder / 'store.db'}"
        finally:
            dispose_all()
        return
    if not os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("TEST_DATABASE_URL is not set (CI sets it to the local Postgres)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(os.environ["TEST_DATABASE_URL"])
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_url(schema)
    finally:
        dispose_all()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, and (when TEST_DATABASE_URL is set) a fresh schema on that Postgres."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Any:
    """A migrated store: the engine for db_url."""
    from app.core.database import engine_for, upgrade

    upgrade(db_url)
    return engine_for(db_url)
