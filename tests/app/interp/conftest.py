"""Fixtures of the explain pipeline's tests: the tiny random chat model (llm_fixtures) with room for the explain
prompt, and small explain options that keep the in-process runs to seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.app.interp.llm_fixtures import build_chat_model


@pytest.fixture(scope="session")
def long_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model (answers are garbage) whose context takes the explain prompt of 20 examples."""
    return build_chat_model(tmp_path_factory.mktemp("tiny-chat-long"), context=4096)


def small_options(**overrides: Any) -> Any:
    """ExplainOptions reading few examples, so the tiny model's garbage answers take seconds per feature."""
    from app.interp.pipeline import ExplainOptions

    base: dict[str, Any] = dict(shown_top=4, shown_band=2, score_top=2, score_band=2, score_non_activating=2,
                                context_before=6, context_after=2)  # fmt: skip
    return ExplainOptions(**{**base, **overrides})
