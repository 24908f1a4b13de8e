"""`explain_sae` end to end on the tiny SAE of tests/app/conftest.py, in real stores, with real LLM backends:

- a tiny random Llama chat model in process: its answers are garbage, so explanations fail or score nothing,
  and every attempt is stored anyway; a rerun skips what is stored;
- a real HTTP server that answers, refuses and then is gone: an LLM failure mid-run is a stored attempt and
  the run goes on; an endpoint that is down stops the run and loses nothing already stored;
- the random baseline: built, registered, indexed like the SAE, explained and scored the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import Engine, select

from app.catalog.saes import load_registered
from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Example, Explanation, IndexContext, IndexRun, SAERow
from app.interp.explainer import PROMPT_VERSION
from app.interp.llm.factory import backend_from_spec
from app.interp.llm.local_hf import LocalChat
from app.interp.pipeline import ExplainError, LLMUnavailable, choose_features, explain_sae
from tests.app.conftest import D_SAE, free_port, wait_ready
from tests.app.interp.conftest import small_options
from tests.app.interp.llm_fixtures import Reply, completion, scripted_server
from trainer.saes.config import SAEConfig
from trainer.saes.registry import build_sae


def _rows(engine: Engine, name: str = "tiny") -> dict[int, Explanation]:
    with session_scope(engine) as session:
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == name))
        rows = session.scalars(select(Explanation).where(Explanation.sae_id == sae_id)).all()
        for row in rows:
            _ = row.scores  # loaded with the row (selectin)
        return {row.feature_index: row for row in rows}


def _live(engine: Engine, n: int) -> list[int]:
    return choose_features(engine, "tiny", sample=n, seed=0)[1]


def test_explain_with_an_in_process_model_stores_every_attempt_and_scores_only_heldout_examples(
    indexed: tuple[Engine, Any], long_chat_dir: Path
) -> None:
    engine, _ = indexed
    features = _live(engine, 3)
    calls: list[tuple[str, int, int]] = []
    summary = explain_sae(engine, "tiny", backend=LocalChat(str(long_chat_dir), device="cpu", progress=False),
                          features=features, options=small_options(), progress=lambda *a: calls.append(a))  # fmt: skip
    assert summary.done == 3 and summary.skipped == 0 and summary.errors == 0 and summary.seconds > 0
    assert calls[0] == ("explain tiny", 0, 3) and calls[-1] == ("explain tiny", 3, 3)
    rows = _rows(engine)
    assert sorted(rows) == features
    with session_scope(engine) as session:
        run_id = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        splits = dict(session.execute(select(Example.id, Example.split).where(Example.run_id == run_id)).all())
        windows = set(session.scalars(select(IndexContext.id).where(IndexContext.run_id == run_id)))
    for f, row in rows.items():
        assert row.llm == f"hf:{long_chat_dir}" and row.prompt_version == PROMPT_VERSION and row.run_id == run_id
        assert row.status in ("ok", "failed") and row.raw is not None
        assert row.shown and all(splits[i] == "shown" for i in row.shown), f  # the explainer read shown ones only
        if row.status == "failed":
            assert row.text is None and row.error and row.scores == []
            continue
        assert row.text and {s.kind for s in row.scores} == {"simulation", "detection", "fuzzing"}
        for s in row.scores:  # scored on held-out examples and non-activating windows, never on a shown one
            assert all(splits[i] == "heldout" for i in s.scored["examples"]), (f, s.kind)
            assert set(s.scored["contexts"]) <= windows and len(s.raw) >= s.failures
    assert summary.ok == sum(r.status == "ok" for r in rows.values())
    assert summary.failed == sum(r.status == "failed" for r in rows.values())

    # a rerun skips what is stored, and does the rest
    more = _live(engine, 4)
    again = explain_sae(engine, "tiny", backend=LocalChat(str(long_chat_dir), device="cpu", progress=False),
                        features=more, options=small_options())  # fmt: skip
    assert again.skipped == len(set(more) & set(features)) and again.done == len(set(more) - set(features))
    after = _rows(engine)
    assert all(after[f].id == rows[f].id for f in features)  # the stored ones were not redone


def test_an_llm_failure_mid_run_is_stored_and_the_run_goes_on(indexed: tuple[Engine, Any]) -> None:
    engine, _ = indexed
    features = _live(engine, 3)
    settings = Settings(llm_max_retries=0, llm_timeout_s=10)
    refused = Reply(400, {"error": {"message": "the model is overloaded"}})
    script = [refused, Reply(200, completion("Explanation: the word fox")), Reply(200, completion("   ")),
              Reply(200, completion("Explanation: foxes and dogs"))]  # fmt: skip
    with scripted_server(script) as server:
        backend = backend_from_spec(server.base, model="m", settings=settings)
        one_at_a_time = small_options(scores=(), features_in_flight=1)  # the script answers in feature order
        summary = explain_sae(engine, "tiny", backend=backend, features=features, options=one_at_a_time,
                              close_backend=False)  # fmt: skip
        assert (summary.errors, summary.ok, summary.failed) == (1, 1, 1) and len(server.seen) == 3
        rows = _rows(engine)
        first, second, third = (rows[f] for f in features)
        assert first.status == "error" and "overloaded" in (first.error or "") and first.text is None
        assert second.status == "ok" and second.text == "the word fox"
        assert third.status == "failed" and third.error == "empty answer" and third.raw == "   "
        # the next run of the same LLM tries the feature it did not answer, and only that one
        again = explain_sae(engine, "tiny", backend=backend, features=features, options=one_at_a_time)
        assert len(server.seen) == 4
    assert (again.skipped, again.ok) == (2, 1)
    assert _rows(engine)[features[0]].text == "foxes and dogs"


def test_an_endpoint_explains_several_features_at_once_and_stops_on_errors_in_a_row(
    indexed: tuple[Engine, Any],
) -> None:
    """Features in flight follow the endpoint's concurrency; when it fails on max_consecutive_errors features
    in a row the run stops, the features it finished are stored and the rest are never started."""
    engine, _ = indexed
    features = _live(engine, 8)
    settings = Settings(llm_max_retries=0, llm_timeout_s=10, llm_concurrency=4)
    answers = [Reply(200, completion(f"Explanation: pattern {i}"), delay_s=0.3) for i in range(4)]
    down = [Reply(503, {"error": {"message": "the server is restarting"}}, delay_s=0.3)] * 4
    with scripted_server(answers + down) as server:
        backend = backend_from_spec(server.base, model="m", settings=settings)
        with pytest.raises(LLMUnavailable, match="3 features in a row") as stopped:
            explain_sae(engine, "tiny", backend=backend, features=features, options=small_options(scores=()))
        assert server.max_in_flight == 4  # four features asked at once, the endpoint's concurrency
        assert len(server.seen) == 8  # the four answered, then one round that failed: nothing more started
    summary = stopped.value.summary
    assert summary.ok == 4 and summary.errors >= 3 and summary.seconds > 0
    rows = _rows(engine)
    assert sorted(r.text or "" for r in rows.values() if r.status == "ok") == [f"pattern {i}" for i in range(4)]
    assert len(rows) <= 8 and all(r.status in ("ok", "error") for r in rows.values())


@pytest.fixture
def llm_serve(long_chat_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`jumpscope llm-serve` (real uvicorn, its own process) on the tiny chat model: (base URL, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "llm-serve", "--model", str(long_chat_dir), "--port", str(port),
         "--log-level", "warning"],
        env={**os.environ, "JUMPSCOPE_DEVICE": "cpu"}, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield f"{base}/v1", proc
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_an_endpoint_that_is_down_stops_the_run_and_loses_nothing(
    indexed: tuple[Engine, Any], llm_serve: tuple[str, subprocess.Popen[str]], long_chat_dir: Path
) -> None:
    engine, _ = indexed
    url, proc = llm_serve
    settings = Settings(llm_max_retries=0, llm_timeout_s=30)
    features = _live(engine, 6)
    done = explain_sae(engine, "tiny", backend=backend_from_spec(url, model=str(long_chat_dir), settings=settings),
                       features=features[:2], options=small_options())  # fmt: skip
    assert done.done == 2 and done.errors == 0
    before = {f: (r.id, r.status, r.text, [(s.kind, s.score) for s in r.scores]) for f, r in _rows(engine).items()}
    proc.terminate()
    proc.communicate(timeout=30)
    with pytest.raises(LLMUnavailable) as err:  # one feature at a time: exactly which fail is known
        explain_sae(engine, "tiny", backend=backend_from_spec(url, model=str(long_chat_dir), settings=settings),
                    features=features, options=small_options(features_in_flight=1))  # fmt: skip
    message = str(err.value)
    assert "gave no answer for 3 features in a row" in message and "run the same command again" in message
    assert "2 of the 6 features of tiny are explained and stored" in message
    assert err.value.summary.skipped == 2 and err.value.summary.errors == 3
    after = _rows(engine)
    assert {f: (r.id, r.status, r.text, [(s.kind, s.score) for s in r.scores]) for f, r in after.items()
            if f in before} == before  # fmt: skip
    assert [after[f].status for f in features[2:5]] == ["error"] * 3 and features[5] not in after


def test_random_baseline_is_built_indexed_explained_and_scored_like_the_sae(
    indexed: tuple[Engine, Any], long_chat_dir: Path, tmp_path: Path
) -> None:
    engine, _ = indexed
    options = small_options(scores=("detection",))
    calls: list[str] = []
    summary = explain_sae(
        engine, "tiny", backend=LocalChat(str(long_chat_dir), device="cpu", progress=False), features=[0, 1],
        baseline="random", options=options, data_dir=tmp_path / "data", device="cpu",
        progress=lambda stage, *_: calls.append(stage),
    )  # fmt: skip
    assert summary.baseline is not None and summary.baseline.name == "tiny-random"
    assert summary.done == 2 and summary.baseline.done == 2
    assert {"explain tiny", "index tiny-random", "explain tiny-random"} <= set(calls)
    with session_scope(engine) as session:
        tiny = session.scalars(select(SAERow).where(SAERow.name == "tiny")).one()
        base = session.scalars(select(SAERow).where(SAERow.name == "tiny-random")).one()
        assert base.config["baseline"] == {"kind": "random", "of": "tiny", "seed": 0}
        assert (base.architecture, base.d_in, base.d_sae, base.layer, base.site, base.model_id) == (
            tiny.architecture, tiny.d_in, tiny.d_sae, tiny.layer, tiny.site, tiny.model_id
        )  # fmt: skip
        ours, theirs = session.get(IndexRun, tiny.index_run_id), session.get(IndexRun, base.index_run_id)
        assert ours is not None and theirs is not None and theirs.status == "complete"
        assert theirs.tokens == ours.tokens and theirs.dataset == ours.dataset
        for key in ("top_k", "window", "n_bands", "band_size", "n_bins", "seed", "heldout_top", "contexts",
                    "context_size"):  # fmt: skip
            assert theirs.params[key] == ours.params[key], key
        weights = load_registered(base).sae
        base_run = base.index_run_id
    torch.manual_seed(0)  # the trainer's rule: the seed, then the SAE is built
    expected = build_sae(SAEConfig(d_in=64, d_sae=D_SAE)).fold(1.0)
    torch.testing.assert_close(weights.W_enc, expected.W_enc)
    torch.testing.assert_close(weights.threshold, expected.threshold)
    rows = _rows(engine, "tiny-random")
    assert sorted(rows) == [0, 1] and all(r.status in ("ok", "failed") for r in rows.values())
    assert all({s.kind for s in r.scores} == {"detection"} for r in rows.values() if r.status == "ok")

    # a rerun reuses the baseline and its index, and skips what both SAEs have stored
    again = explain_sae(engine, "tiny", backend=LocalChat(str(long_chat_dir), device="cpu", progress=False),
                        features=[0, 1], baseline="random", options=options, data_dir=tmp_path / "data",
                        device="cpu")  # fmt: skip
    assert again.skipped == 2 and again.baseline is not None and again.baseline.skipped == 2
    with session_scope(engine) as session:
        assert session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny-random")) == base_run
    assert np.isfinite([s for r in rows.values() for s in [r.seconds]]).all()


def test_bad_requests_are_clear_errors(registered: tuple[Engine, Any], long_chat_dir: Path) -> None:
    engine, _ = registered
    backend = LocalChat(str(long_chat_dir), device="cpu", progress=False)
    for kwargs, message in [
        ({"features": [1]}, "not indexed yet: run `jumpscope index tiny` first"),
        ({"features": [1], "sample": 2}, "either features"),
        ({}, "either features"),
    ]:
        with pytest.raises(ExplainError, match=message):
            explain_sae(engine, "tiny", backend=backend, close_backend=False, **kwargs)
    from tests.app.conftest import index_tiny

    index_tiny(engine)
    with pytest.raises(ExplainError, match=f"features 0 to {D_SAE - 1}; there is no feature {D_SAE}"):
        explain_sae(engine, "tiny", backend=backend, features=[1, D_SAE], close_backend=False)
    with pytest.raises(ExplainError, match="at least 1"):
        explain_sae(engine, "tiny", backend=backend, sample=0, close_backend=False)
    from app.catalog.saes import NotFound

    with pytest.raises(NotFound, match="no SAE named 'nope'"):
        explain_sae(engine, "nope", backend=backend, features=[1])
    assert _rows(engine) == {}


@pytest.mark.slow
def test_the_offline_default_explains_and_every_score_is_stored(indexed: tuple[Engine, Any]) -> None:
    """The packaged SmolLM2-135M-Instruct (converted once into the user cache): answers that parse, so the
    explanation and its three scores on held-out examples reach the store (about 10 s per feature here)."""
    engine, _ = indexed
    backend = LocalChat(None, device="cpu", progress=False)
    summary = explain_sae(engine, "tiny", backend=backend, sample=2, options=small_options())
    assert summary.done == 2 and summary.errors == 0 and summary.ok >= 1
    rows = [r for r in _rows(engine).values() if r.status == "ok"]
    assert rows and all(r.llm == backend.name for r in rows)
    for row in rows:
        assert row.text and {s.kind for s in row.scores} == {"simulation", "detection", "fuzzing"}
        sim = next(s for s in row.scores if s.kind == "simulation")
        assert sim.n > 0 and sim.score is not None and -1.0 <= sim.score <= 1.0 and sim.raw
    assert summary.scores["simulation"] and summary.mean("simulation") is not None
