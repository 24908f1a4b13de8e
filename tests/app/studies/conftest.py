"""Fixtures of the study tests: a real store (SQLite, and Postgres when TEST_DATABASE_URL is set) with three SAEs
(two JumpReLU, one TopK), and the ratings of a study, posted through the real rating API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from app.catalog.saes import import_sae
from app.core.database import session_scope
from trainer.formats.native import SAEMetadata, save_native
from trainer.saes.config import SAEConfig
from trainer.saes.registry import build_sae

STUDY = "fig6 pilot/round 1"
"""A study name with a space and a slash: links and routes must carry both."""
Store = tuple[str, Engine, Path]
FORMULA_NOTE = '=HYPERLINK("http://evil")'
HTML_NOTE = "<b>not bold</b> & fires on 'fox'"

# (sae, feature index, rater, label, note): tiny and tiny-b are JumpReLU, tiny-topk is TopK. Features rated by
# two raters: tiny 0 [yes, yes], tiny 1 [yes, maybe], tiny-topk 0 [no, no]: Krippendorff's alpha 6/11 nominal,
# 7/9 ordinal (tests/app/studies/test_results.py works the same units out by hand).
FIG6: list[tuple[str, int, str, str, str]] = [
    ("tiny", 0, "alice", "yes", HTML_NOTE),
    ("tiny", 0, "bob", "yes", ""),
    ("tiny", 1, "alice", "yes", ""),
    ("tiny", 1, "bob", "maybe", FORMULA_NOTE),
    ("tiny", 2, "alice", "no", "dead to me"),
    ("tiny-b", 5, "carol", "yes", ""),
    ("tiny-topk", 0, "alice", "no", ""),
    ("tiny-topk", 0, "bob", "no", ""),
    ("tiny-topk", 1, "alice", "maybe", ""),
]
"""The study's ratings. Per architecture: jumprelu yes 4, maybe 1, no 1 (6 ratings, 4 features, 3 raters);
topk yes 0, maybe 1, no 2 (3 ratings, 2 features, 2 raters)."""


def register(engine: Engine, folder: Path, name: str, architecture: str) -> None:
    """Register a random SAE of `architecture` (64 inputs, 40 features, never indexed) as `name`."""
    sae = build_sae(SAEConfig(d_in=64, d_sae=40, architecture=architecture, use_pre_enc_bias=False, k=4))
    save_native(folder / name, sae, SAEMetadata(model="tiny-model", layer=1, site="resid"))
    with session_scope(engine) as session:
        import_sae(session, folder / name, data_dir=folder / "data", name=name)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def study_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """(url, engine, folder): a migrated store with 'tiny' and 'tiny-b' (jumprelu) and 'tiny-topk' (topk)
    registered. Ratings need no index, so none is built."""
    from app.core.database import engine_for, upgrade
    from tests.conftest import database

    folder = tmp_path_factory.mktemp(f"studies-{request.param}")
    with database(request.param, folder) as url:
        upgrade(url)
        engine = engine_for(url)
        for name, architecture in [("tiny", "jumprelu"), ("tiny-b", "jumprelu"), ("tiny-topk", "topk")]:
            register(engine, folder, name, architecture)
        yield url, engine, folder


def post_ratings(post: Callable[..., Any], study: str, ratings: list[tuple[str, int, str, str, str]],
                 *, blinded: bool = True) -> None:  # fmt: skip
    """Post each rating through the rating API (`post` is a TestClient's or httpx's post)."""
    for sae, index, rater, label, note in ratings:
        body = {"rater": rater, "label": label, "note": note, "study_id": study, "blinded": blinded}
        reply = post(f"/api/v1/saes/{sae}/features/{index}/ratings", json=body)
        assert reply.status_code == 201, reply.text
