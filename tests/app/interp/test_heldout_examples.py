"""Held-out examples and the context reservoir, as `jumpscope index` stores them (issue 18).

The tiny Gemma 2 and the tiny SAE of tests/app/conftest.py, indexed into real stores: the held-out
examples never repeat a shown one and never reach the pages or the REST API; every context window's
fired list is the set of features that fire in it; and the index from a harvest's cache stores the same
held-out examples and contexts as the live pass over the same tokens.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from app.cli import app
from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Example, Feature, IndexContext, IndexRun, SAERow
from app.features.indexer import IndexOptions, index_sae
from app.server import create_app
from tests.app.conftest import CONTEXT, D_SAE
from trainer.analysis.feature_stats import StatsConfig


def _run_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        run_id = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        assert run_id is not None
        return run_id


def _token(e: Example) -> tuple[str | None, bytes, int]:
    """What names an example's token in the store: its document, window and the token's place in it."""
    return e.document, e.token_ids, e.max_position


def test_heldout_examples_never_repeat_a_shown_one_and_never_reach_the_pages(
    indexed: tuple[Engine, Any], db_url: str, tmp_path: Path
) -> None:
    engine, _ = indexed
    run_id = _run_id(engine)
    n_held = 0
    with session_scope(engine) as session:
        examples = session.scalars(select(Example).where(Example.run_id == run_id)).all()
        assert {e.split for e in examples} == {"shown", "heldout"}
        for f in range(D_SAE):
            mine = [e for e in examples if e.feature_index == f]
            shown = {_token(e) for e in mine if e.split == "shown"}
            held = [e for e in mine if e.split == "heldout"]
            n_held += len(held)
            assert not {_token(e) for e in held} & shown, f
            assert len({_token(e) for e in held}) == len(held)  # no held-out example twice either
            # ranks continue the shown ones (top-K 4, band samples 2 per band in the tiny index)
            assert all(e.rank >= (4 if e.band == -1 else 2) for e in held)
            top_held = sorted((e for e in held if e.band == -1), key=lambda e: e.rank)
            top_shown = [e.max_value for e in mine if e.split == "shown" and e.band == -1]
            assert [e.max_value for e in top_held] == sorted((e.max_value for e in top_held), reverse=True)
            if top_held:
                assert top_held[0].max_value <= min(top_shown)  # the next ranks of the top-K
        assert n_held > D_SAE
        feature = session.scalar(
            select(Feature).where(Feature.run_id == run_id, Feature.fire_count > 0).order_by(Feature.index).limit(1)
        )
        assert feature is not None
        index = feature.index
        shown_ids = {e.id for e in examples if e.feature_index == index and e.split == "shown"}
        n_shown = len(shown_ids)
        held = {(e.token_ids, e.max_position) for e in examples if e.feature_index == index and e.split == "heldout"}
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        detail = client.get(f"/api/v1/saes/tiny/features/{index}").json()
        page = client.get(f"/saes/tiny/features/{index}")
    listed = detail["top_examples"] + [e for band in detail["bands"] for e in band["examples"]]
    assert len(listed) == n_shown and len(detail["top_examples"]) == 4
    on_page = {(np.asarray(e["token_ids"], dtype="<i4").tobytes(), e["max_position"]) for e in listed}
    assert held and not held & on_page
    # the page's rating form records the examples on screen: exactly the shown ones
    field = re.search(r'<input type="hidden" name="shown" value="([^"]*)"', page.text)
    assert page.status_code == 200 and field is not None
    on_screen = json.loads(html.unescape(field.group(1)))
    assert set(on_screen["top_example_ids"] + on_screen["band_example_ids"]) == shown_ids


def test_context_windows_name_the_features_firing_in_them(indexed: tuple[Engine, Any]) -> None:
    engine, _ = indexed
    run_id = _run_id(engine)
    with session_scope(engine) as session:
        run = session.get(IndexRun, run_id)
        assert run is not None and run.params["contexts"] == 128
        rows = session.scalars(select(IndexContext).where(IndexContext.run_id == run_id)).all()
        features = session.scalars(select(Feature).where(Feature.run_id == run_id)).all()
    # every streamed sequence (batches of 8, fewer than 128 in all) offers a window and each one is kept
    assert len(rows) == len({r.rank for r in rows}) and 8 <= len(rows) < 128 and len(rows) % 8 == 0
    fires_somewhere = np.zeros(D_SAE, dtype=bool)
    for row in rows:
        fired = np.frombuffer(row.fired, dtype="<i4")
        assert (np.diff(fired) > 0).all() and (fired >= 0).all() and (fired < D_SAE).all()
        assert len(np.frombuffer(row.token_ids, dtype="<i4")) == 16  # the index's window
        fires_somewhere[fired] = True
    dead = {f.index for f in features if f.fire_count == 0}
    assert dead.isdisjoint(np.flatnonzero(fires_somewhere).tolist())  # a dead feature fires in no window
    assert fires_somewhere.any() and not all(len(r.fired) == 4 * D_SAE for r in rows)  # some fire, not all


def _stored(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    run_id = _run_id(engine)
    with session_scope(engine) as session:
        examples = session.execute(
            select(Example.feature_index, Example.split, Example.band, Example.rank, Example.token_ids,
                   Example.max_position, Example.document, Example.max_value)
            .where(Example.run_id == run_id)
            .order_by(Example.feature_index, Example.split, Example.band, Example.rank)
        ).all()  # fmt: skip
        contexts = session.execute(
            select(IndexContext.rank, IndexContext.token_ids, IndexContext.fired, IndexContext.document)
            .where(IndexContext.run_id == run_id)
            .order_by(IndexContext.rank)
        ).all()
    return [tuple(r) for r in examples], [tuple(r) for r in contexts]


def test_the_index_from_a_harvest_stores_the_same_heldout_examples_and_contexts(
    registered: tuple[Engine, Any], db_url: str, tiny_model_dir: Path, short_docs: Path, tmp_path: Path
) -> None:
    engine, _ = registered
    env = {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    acts = tmp_path / "acts"
    cache = ["cache", "--model", str(tiny_model_dir), "--layer", "1", "--site", "resid", "--dataset", str(short_docs),
             "--context-size", str(CONTEXT), "--tokens", "3000", "--out", str(acts), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, cache, env=env)
    assert result.exit_code == 0, result.output
    stats = StatsConfig(top_k=3, window=12, n_bands=2, band_size=2, n_bins=6, heldout_top=3, heldout_band=2,
                        contexts=20)  # fmt: skip
    base: dict[str, Any] = dict(tokens=1200, stats=stats, device="cpu", progress=False)
    index_sae(engine, "tiny", IndexOptions(dataset=str(short_docs), context_size=CONTEXT, **base))
    live = _stored(engine)
    index_sae(engine, "tiny", IndexOptions(activations=acts, **base))
    cached = _stored(engine)
    examples = [(a[:-1], b[:-1]) for a, b in zip(live[0], cached[0], strict=True)]
    assert len(live[0]) == len(cached[0]) and all(a == b for a, b in examples)
    np.testing.assert_allclose([r[-1] for r in cached[0]], [r[-1] for r in live[0]], rtol=1e-5)
    assert cached[1] == live[1] and len(live[1]) == 20
    assert sum(1 for r in live[0] if r[1] == "heldout") > D_SAE
    with session_scope(engine) as session:  # the old run's windows went with it
        assert session.scalar(select(func.count()).select_from(IndexContext)) == 20
