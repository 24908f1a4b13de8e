"""The explanation store (app.interp.store) and its migration, on SQLite and on the real Postgres."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from app.catalog.vocab import vocab_for
from app.core.database import downgrade, engine_for, session_scope, upgrade
from app.core.tables import Example, Explanation, ExplanationScore, IndexContext, SAERow
from app.interp import store
from app.interp.store import ScoreRecord
from tests.app.conftest import D_SAE, index_tiny

# --- the migration ---------------------------------------------------------------------------------------------------

OLD_ROWS = [
    "INSERT INTO models (id, name, created_at) VALUES (1, 'm', '2026-01-01')",
    "INSERT INTO saes (id, name, model_id, architecture, d_in, d_sae, path, dtype, normalization_scale, prepend_bos, "
    "tokens_trained, metrics, config, indexed_tokens, created_at, updated_at) VALUES (1, 's', 1, 'jumprelu', 4, 2, "
    "'/x', 'float32', 1.0, true, 0, '{}', '{}', 0, '2026-01-01', '2026-01-01')",
    "INSERT INTO index_runs (id, sae_id, status, tokens, params, started_at) VALUES (1, 1, 'complete', 10, '{}', "
    "'2026-01-01')",
    'INSERT INTO features (run_id, "index", fire_count, frequency, max_activation, mean_activation, histogram, '
    "top_logits, bottom_logits, \"similar\", search_text) VALUES (1, 0, 1, 0.1, 1.0, 1.0, '{}', '[]', '[]', '[]', '')",
    'INSERT INTO examples (run_id, feature_index, band, rank, token_ids, "values", max_value, max_position) '
    "VALUES (1, 0, -1, 0, :blob, :blob, 1.0, 0)",
]
NEW_ROWS = [
    'INSERT INTO examples (run_id, feature_index, band, rank, token_ids, "values", max_value, max_position, split) '
    "VALUES (1, 0, -1, 1, :blob, :blob, 0.5, 0, 'heldout')",
    "INSERT INTO index_contexts (run_id, rank, token_ids, fired) VALUES (1, 0, :blob, :blob)",
    "INSERT INTO explanations (id, sae_id, run_id, feature_index, text, llm, prompt_version, status, shown, raw, "
    "seconds, created_at) VALUES (1, 1, 1, 0, 'x', 'l', 'v', 'ok', '[]', '', 0, '2026-01-01')",
    "INSERT INTO explanation_scores (explanation_id, kind, score, n, failures, scored, raw, llm, prompt_version, "
    "created_at) VALUES (1, 'simulation', NULL, 0, 0, '{}', '[]', 'l', 'v', '2026-01-01')",
    "INSERT INTO jobs (kind, params, status, progress, message, metrics, result, attempts, created_at) "
    "VALUES ('explain', '{}', 'queued', 0, '', '[]', '{}', 0, '2026-01-01')",
]


def _run(engine: Engine, statements: list[str]) -> None:
    blob = np.zeros(2, dtype="<i4").tobytes()
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {"blob": blob})


def test_migration_0005_up_down_up_keeps_the_shown_index(db_url: str) -> None:
    upgrade(db_url, "0004")
    engine = engine_for(db_url)
    _run(engine, OLD_ROWS)
    upgrade(db_url)
    with engine.connect() as conn:  # existing examples are the shown ones
        assert conn.execute(text("SELECT split FROM examples")).scalars().all() == ["shown"]
    _run(engine, NEW_ROWS)
    with pytest.raises(IntegrityError):  # the kinds stay checked
        _run(engine, [NEW_ROWS[3].replace("'simulation'", "'vibes'")])
    downgrade(db_url, "0004")
    tables = set(inspect(engine).get_table_names())
    assert not tables & {"explanations", "explanation_scores", "index_contexts"}
    assert "split" not in {c["name"] for c in inspect(engine).get_columns("examples")}
    with engine.connect() as conn:  # held-out examples would show on the pages of the old version: gone
        assert conn.execute(text("SELECT max_value FROM examples")).scalars().all() == [1.0]
        assert conn.execute(text("SELECT kind FROM jobs")).scalars().all() == []
    with pytest.raises(IntegrityError):  # and 0004 refuses explain jobs again
        _run(engine, NEW_ROWS[-1:])
    upgrade(db_url)
    _run(engine, NEW_ROWS)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM explanation_scores")).scalar() == 1


# --- explanations ----------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny(shared_index: Any) -> tuple[Engine, int, int]:
    """(engine, sae id, index run id) of the shared tiny index; each test uses its own features."""
    _, engine, _, _ = shared_index
    with session_scope(engine) as session:
        sae = session.scalars(select(SAERow).where(SAERow.name == "tiny")).one()
        assert sae.index_run_id is not None
        return engine, sae.id, sae.index_run_id


def _score(kind: Any, score: float | None, ids: tuple[int | None, ...] = (3, -7, None), **kw: Any) -> ScoreRecord:
    base: dict[str, Any] = dict(n=12, failures=1, raw=("0\t1", "x" * 9000), llm="l", prompt_version=f"{kind}-v1")
    return ScoreRecord(kind=kind, score=score, scored_ids=ids, **{**base, **kw})


def _save(session: Any, sae_id: int, run_id: int, feature: int, **kw: Any) -> Explanation:
    base: dict[str, Any] = dict(sae_id=sae_id, run_id=run_id, feature_index=feature, llm="l", prompt_version="v",
                                status="ok", text="the word fox", raw="Explanation: the word fox")  # fmt: skip
    return store.save_explanation(session, **{**base, **kw})


def test_an_explanation_and_its_scores_are_stored_together_and_replaced_on_rerun(tiny: tuple[Engine, int, int]) -> None:
    engine, sae_id, run_id = tiny
    with session_scope(engine) as session:
        _save(session, sae_id, run_id, 1, shown_ids=(5, None, 6), seconds=1.5,
              scores=[_score("simulation", 0.42), _score("detection", None), _score("fuzzing", 0.5)])  # fmt: skip
    with session_scope(engine) as session:
        [row] = store.feature_explanations(session, sae_id=sae_id, feature_index=1)
        assert (row.text, row.status, row.shown, row.run_id, row.seconds) == ("the word fox", "ok", [5, 6], run_id, 1.5)
        assert store.scores_of(row) == {"simulation": 0.42, "detection": None, "fuzzing": 0.5}
        sim = next(s for s in row.scores if s.kind == "simulation")
        assert sim.scored == {"examples": [3], "contexts": [7]} and (sim.n, sim.failures) == (12, 1)
        assert sim.raw[0] == "0\t1" and len(sim.raw[1]) < 4100  # answers are bounded
    with session_scope(engine) as session:  # a rerun of the same LLM and prompt replaces row and scores
        _save(session, sae_id, run_id, 1, text="foxes", scores=[_score("simulation", 0.1)])
    with session_scope(engine) as session:
        [row] = store.feature_explanations(session, sae_id=sae_id, feature_index=1)
        assert row.text == "foxes" and store.scores_of(row) == {"simulation": 0.1, "detection": None, "fuzzing": None}
        n_scores = session.scalar(select(func.count()).select_from(ExplanationScore))
    # all or nothing: a score the database refuses takes the explanation with it, the old row stays
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        _save(session, sae_id, run_id, 1, text="lost", scores=[_score("simulation", 0.9), _score("vibes", 0.2)])
    with session_scope(engine) as session:
        [row] = store.feature_explanations(session, sae_id=sae_id, feature_index=1)
        assert row.text == "foxes" and session.scalar(select(func.count()).select_from(ExplanationScore)) == n_scores


def test_resume_skips_explained_and_failed_features_and_retries_llm_errors(tiny: tuple[Engine, int, int]) -> None:
    engine, sae_id, run_id = tiny
    with session_scope(engine) as session:
        _save(session, sae_id, run_id, 2)
        _save(session, sae_id, run_id, 3, status="failed", text=None, raw="??", error="the answer has no words")
        _save(session, sae_id, run_id, 4, status="error", text=None, raw="", error="connection refused")
        _save(session, sae_id, run_id, 5, llm="other")
        _save(session, sae_id, run_id, 6, prompt_version="v0")
    with session_scope(engine) as session:
        done = store.explained_features(session, sae_id=sae_id, llm="l", prompt_version="v")
        assert {2, 3} <= done and not {4, 5, 6} & done
        retry = store.explained_features(session, sae_id=sae_id, llm="l", prompt_version="v", retry_failed=True)
        assert 2 in retry and 3 not in retry


def test_reads_survive_failed_attempts_and_missing_scores(tiny: tuple[Engine, int, int]) -> None:
    engine, sae_id, run_id = tiny
    with session_scope(engine) as session:
        _save(session, sae_id, run_id, 7, llm="a", text="older", scores=[_score("simulation", 0.3)])
        _save(session, sae_id, run_id, 7, llm="b", text="newer", scores=[_score("simulation", None)])
        _save(session, sae_id, run_id, 7, llm="c", status="failed", text=None, raw="garbage")
        _save(session, sae_id, run_id, 8, llm="a", text="alone")  # no scores at all
        _save(session, sae_id, run_id, 9, llm="a", status="error", text=None, raw="")
    with session_scope(engine) as session:
        latest = store.latest_explanations(session, sae_id=sae_id, features=[7, 8, 9])
        assert {f: e.text for f, e in latest.items()} == {7: "newer", 8: "alone"}  # failed attempts have no text
        assert store.scores_of(latest[8]) == {"simulation": None, "detection": None, "fuzzing": None}
        assert store.latest_explanations(session, sae_id=sae_id, features=[7], llm="a")[7].text == "older"
        attempts = store.feature_explanations(session, sae_id=sae_id, feature_index=7)
        assert [e.llm for e in attempts] == ["c", "b", "a"] and attempts[0].scores == []
        dist = store.score_distributions(session, sae_id=sae_id, llm="a")
        assert 0.3 in dist["simulation"] and dist["detection"] == [] and set(dist) == {"simulation", "detection",
                                                                                       "fuzzing"}  # fmt: skip
        assert None not in store.score_distributions(session, sae_id=sae_id)["simulation"]


def test_example_contexts_and_non_activating_windows(tiny: tuple[Engine, int, int]) -> None:
    engine, _, run_id = tiny
    with session_scope(engine) as session:
        sae = session.scalars(select(SAERow).where(SAERow.name == "tiny")).one()
        vocab = vocab_for(engine, sae.model)
        windows = store.context_windows(session, run_id=run_id)
        feature = next(
            f for f in range(D_SAE)
            if store.example_contexts(session, run_id=run_id, feature_index=f, split="heldout", vocab=vocab)
            and 2 <= sum(not w.fires(f) for w in windows) < len(windows)
        )  # fmt: skip
        shown = store.example_contexts(session, run_id=run_id, feature_index=feature, split="shown", vocab=vocab)
        held = store.example_contexts(session, run_id=run_id, feature_index=feature, split="heldout", vocab=vocab)
        rows = {e.id: e for e in session.scalars(select(Example).where(Example.run_id == run_id,
                                                                      Example.feature_index == feature))}  # fmt: skip
        stored = {c.id: c for c in session.scalars(select(IndexContext).where(IndexContext.run_id == run_id))}
        assert store.example_contexts(session, run_id=run_id, feature_index=D_SAE + 5, split="shown", vocab=vocab) == []
    bands = [b for b, _ in shown]
    assert bands[:4] == [-1] * 4 and bands[4:] == sorted(bands[4:], reverse=True)  # top first, highest band next
    for split, got in (("shown", shown), ("heldout", held)):
        for band, c in got:
            row = rows[c.example_id]  # type: ignore[index]
            assert (row.split, row.band) == (split, band) and c.is_activating
            assert c.tokens == tuple(vocab[t] for t in np.frombuffer(row.token_ids, dtype="<i4"))
            np.testing.assert_allclose(c.values, np.frombuffer(row.values, dtype="<f4"), rtol=1e-6)
    silent = store.non_activating_contexts(windows, feature_index=feature, n=2, vocab=vocab, rng_seed=0)
    assert len(silent) == 2 and all(not c.is_activating for c in silent)
    for c in silent:
        assert c.example_id is not None and c.example_id < 0
        window = stored[-c.example_id]
        assert feature not in np.frombuffer(window.fired, dtype="<i4")
        assert c.tokens == tuple(vocab[t] for t in np.frombuffer(window.token_ids, dtype="<i4"))
    again = store.non_activating_contexts(windows, feature_index=feature, n=2, vocab=vocab, rng_seed=0)
    assert [c.example_id for c in again] == [c.example_id for c in silent]  # reproducible
    every = store.non_activating_contexts(windows, feature_index=feature, n=10**6, vocab=vocab, rng_seed=1)
    assert len(every) == sum(not w.fires(feature) for w in windows)
    ids = [c.example_id for _, c in shown[:2]] + [c.example_id for c in silent] + [None]
    assert store.split_scored_ids(ids) == {"examples": ids[:2], "contexts": [-i for i in ids[2:4] if i is not None]}


def test_reindexing_keeps_explanations_and_deleting_the_sae_removes_them(indexed: tuple[Engine, Any]) -> None:
    engine, _ = indexed
    with session_scope(engine) as session:
        sae = session.scalars(select(SAERow).where(SAERow.name == "tiny")).one()
        assert sae.index_run_id is not None
        _save(session, sae.id, sae.index_run_id, 0, scores=[_score("fuzzing", 0.7)])
        sae_id = sae.id
    index_tiny(engine)  # the old run goes: the explanation stays, no longer tied to a run
    with session_scope(engine) as session:
        [row] = store.feature_explanations(session, sae_id=sae_id, feature_index=0)
        assert row.run_id is None and store.scores_of(row)["fuzzing"] == 0.7
        session.delete(session.get(SAERow, sae_id))
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Explanation)) == 0
        assert session.scalar(select(func.count()).select_from(ExplanationScore)) == 0


def test_the_baseline_of_an_sae_is_found_by_name_and_marker(tiny: tuple[Engine, int, int]) -> None:
    engine, sae_id, _ = tiny
    with session_scope(engine) as session:
        sae = session.get(SAERow, sae_id)
        assert sae is not None and store.baseline_sae(session, sae) is None and store.baseline_info(sae) is None
        fake = SAERow(name="tiny-random", architecture="jumprelu", d_in=64, d_sae=D_SAE, path="/nowhere", config={})
        session.add(fake)
        session.flush()
        assert store.baseline_sae(session, sae) is None  # the name alone does not make a baseline
        fake.config = {"baseline": {"kind": "random", "of": "tiny", "seed": 0}}
        session.flush()
        assert store.baseline_sae(session, sae) is fake and store.baseline_info(fake) == fake.config["baseline"]
        session.delete(fake)
