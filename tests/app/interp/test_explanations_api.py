"""The REST API of automated explanations on the real store (SQLite, and Postgres when TEST_DATABASE_URL is set),
with explanations and scores written through app.interp.store's save functions for the tiny indexed SAE: a
feature's explanations (newest first, null scores, failed attempts, a damaged row), the paged list (search,
sort, status), the score distributions with and without a random baseline, a sweep's scores per architecture,
and 404 / 422 on bad input."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app.catalog.saes import import_sae
from app.core.database import session_scope
from app.core.tables import Example, Explanation, ExplanationScore, Feature, SAERow, Sweep, SweepPointRow
from app.interp.store import ScoreRecord, baseline_name, save_explanation, window_context_id
from tests.app.conftest import random_jumprelu
from tests.app.test_api import make_client
from trainer.formats.native import SAEMetadata, save_native

WORD = "zebracorn"
"""In explanation texts only: the short documents never contain it, so `q` can only match explanations."""
Z = 1.959963984540054


@dataclass(frozen=True)
class Seeded:
    """What `seed` wrote: the features it used and the ids it saved."""

    a: int
    """Two explanations: llm-a (older; simulation 0.8, detection 0.9) and llm-b (newer; simulation 0.5, detection
    failed with an error, fuzzing not computed)."""
    b: int
    """One explanation by llm-a with all three scores (0.2, 0.6, 0.7)."""
    c: int
    """A failed attempt only (unreadable answer, kept with its raw text)."""
    d: int
    """A damaged row: no index run, `shown` not a list, one score NaN and one `scored` not an object."""
    e: int
    """Nothing stored."""
    shown_a: list[int]
    """Example ids llm-b was shown for feature a."""
    scored_a: list[int]
    """Held-out example ids llm-b's simulation was scored on."""
    contexts_a: list[int]
    """index_contexts ids of the non-activating windows it was scored on too."""


def record(kind: str, score: float | None, *, llm: str, ids: tuple[int | None, ...] = (), error: str | None = None,
           n: int = 10, failures: int = 0) -> ScoreRecord:  # fmt: skip
    """A ScoreRecord as the pipeline stores one."""
    return ScoreRecord(kind=kind, score=score, n=n, failures=failures, scored_ids=ids, raw=("answer",), llm=llm,  # type: ignore[arg-type]
                       prompt_version="p1", error=error)  # fmt: skip


def register(engine: Engine, folder: Path, model_dir: Path, name: str, *, baseline_of: str | None = None) -> None:
    """Register a random JumpReLU SAE on the tiny model as `name` (a random baseline of `baseline_of` if given)."""
    extra = {"baseline": {"kind": "random", "of": baseline_of, "seed": 0}} if baseline_of else {}
    src = folder / f"src-{name}"
    save_native(src, random_jumprelu(64, seed=11), SAEMetadata(model=str(model_dir), layer=1, site="resid",
                                                                extra=extra))  # fmt: skip
    with session_scope(engine) as session:
        import_sae(session, src, data_dir=folder / "data", name=name)


def seed(engine: Engine, folder: Path, model_dir: Path) -> Seeded:
    """Explanations and scores for 'tiny' through the store's save function, its random baseline 'tiny-random'
    with two explained features, 'lone' with nothing, and a sweep 'sw' of tiny (jumprelu) and lone (topk)."""
    register(engine, folder, model_dir, baseline_name("tiny"), baseline_of="tiny")
    register(engine, folder, model_dir, "lone")
    with session_scope(engine) as session:
        sae = session.scalar(select(SAERow).where(SAERow.name == "tiny"))
        assert sae is not None and sae.index_run_id is not None
        run = sae.index_run_id
        live = session.scalars(
            select(Feature.index).where(Feature.run_id == run, Feature.fire_count > 0).order_by(Feature.index)
        ).all()
        a, b, c, d, e = live[:5]

        def ids(split: str) -> list[int]:
            query = select(Example.id).where(Example.run_id == run, Example.feature_index == a, Example.split == split)
            return list(session.scalars(query.order_by(Example.id)))

        shown, heldout = ids("shown"), ids("heldout")
        assert shown and heldout
        contexts = [7, 9]
        common = dict(sae_id=sae.id, run_id=run, prompt_version="p1")
        save_explanation(session, **common, feature_index=a, llm="llm-a", status="ok", text=f"the animal {WORD}",
                         raw="x", shown_ids=shown[:2], scores=[record("simulation", 0.8, llm="llm-a"),
                                                               record("detection", 0.9, llm="llm-a")])  # fmt: skip
        save_explanation(
            session, **common, feature_index=a, llm="llm-b", status="ok", text=f"<b>{WORD}</b> & friends", raw="x",
            shown_ids=[*shown, None],
            scores=[record("simulation", 0.5, llm="llm-b", n=42, failures=1,
                           ids=(*heldout, *(window_context_id(i) for i in contexts))),
                    record("detection", None, llm="llm-b", error="endpoint down")],
        )  # fmt: skip
        save_explanation(session, **common, feature_index=b, llm="llm-a", status="ok", text="sparse things",
                         raw="x", scores=[record("simulation", 0.2, llm="llm-a"), record("detection", 0.6, llm="llm-a"),
                                          record("fuzzing", 0.7, llm="llm-a")])  # fmt: skip
        save_explanation(session, **common, feature_index=c, llm="llm-a", status="failed", text=None,
                         raw=f"garbled {WORD} answer", error="no explanation in the answer")  # fmt: skip
        damaged = Explanation(sae_id=sae.id, run_id=None, feature_index=d, text="lazy dog", llm="llm-a",
                              prompt_version="p0", status="ok", shown={"not": "a list"}, raw="")  # fmt: skip
        damaged.scores.append(ExplanationScore(kind="simulation", score=math.nan, n=0, failures=0, scored=[1, 2],
                                               raw=[], llm="llm-a", prompt_version="p0"))  # fmt: skip
        session.add(damaged)
        base = session.scalar(select(SAERow).where(SAERow.name == baseline_name("tiny")))
        lone = session.scalar(select(SAERow).where(SAERow.name == "lone"))
        assert base is not None and lone is not None
        for index, sim in [(0, 0.05), (1, -0.15)]:
            save_explanation(session, sae_id=base.id, run_id=None, feature_index=index, llm="llm-a",
                             prompt_version="p1", status="ok", text="random", raw="random",
                             scores=[record("simulation", sim, llm="llm-a"),
                                     record("detection", 0.5, llm="llm-a")])  # fmt: skip
        sweep = Sweep(name="sw", model="tiny", layer=1, site="resid")
        sweep.points = [SweepPointRow(sae_id=sae.id, architecture="jumprelu", knob="lambda", value=1.0),
                        SweepPointRow(sae_id=lone.id, architecture="topk", knob="k", value=4.0)]  # fmt: skip
        session.add(sweep)
    return Seeded(a, b, c, d, e, shown, heldout, contexts)


@pytest.fixture(scope="module")
def seeded(shared_index: Any, tiny_model_dir: Path) -> tuple[Any, Seeded]:
    """The module's shared store (tiny indexed) with `seed` written once."""
    _, engine, _, folder = shared_index
    return shared_index, seed(engine, folder, tiny_model_dir)


@pytest.fixture(scope="module")
def client(seeded: tuple[Any, Seeded]) -> Iterator[TestClient]:
    (url, _, _, folder), _ = seeded
    with make_client(url, folder) as c:
        yield c


@pytest.fixture(scope="module")
def s(seeded: tuple[Any, Seeded]) -> Seeded:
    return seeded[1]


# --- one feature -----------------------------------------------------------------------------------------------------


def test_a_feature_lists_its_explanations_newest_first_with_null_scores(client: TestClient, s: Seeded) -> None:
    reply = client.get(f"/api/v1/saes/tiny/features/{s.a}")
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    newer, older = doc["explanations"]
    assert (newer["text"], newer["llm"], newer["prompt_version"]) == (f"<b>{WORD}</b> & friends", "llm-b", "p1")
    assert newer["scores"] == {"simulation": 0.5, "detection": None, "fuzzing": None}
    assert older["scores"] == {"simulation": 0.8, "detection": 0.9, "fuzzing": None}
    assert newer["created_at"] >= older["created_at"] and older["text"] == f"the animal {WORD}"
    assert newer["shown"] == s.shown_a  # the None of an unsaved context is not an id
    sim = newer["score_details"]["simulation"]
    assert (sim["n"], sim["failures"], sim["examples"], sim["contexts"]) == (42, 1, s.scored_a, s.contexts_a)
    assert newer["score_details"]["detection"]["error"] == "endpoint down"
    assert "fuzzing" not in newer["score_details"]
    assert doc["failed_explanations"] == []


def test_a_failed_attempt_is_listed_apart_with_its_raw_answer(client: TestClient, s: Seeded) -> None:
    doc = client.get(f"/api/v1/saes/tiny/features/{s.c}").json()
    assert doc["explanations"] == []
    [failed] = doc["failed_explanations"]
    assert (failed["status"], failed["llm"], failed["raw"]) == ("failed", "llm-a", f"garbled {WORD} answer")
    assert failed["error"] == "no explanation in the answer"


def test_a_damaged_row_reads_as_nulls_not_an_error(client: TestClient, s: Seeded) -> None:
    reply = client.get(f"/api/v1/saes/tiny/features/{s.d}")
    assert reply.status_code == 200, reply.text
    [row] = reply.json()["explanations"]
    assert row["text"] == "lazy dog" and row["shown"] == []
    assert row["scores"] == {"simulation": None, "detection": None, "fuzzing": None}  # NaN (or NULL on SQLite)
    assert row["score_details"]["simulation"]["examples"] == [] == row["score_details"]["simulation"]["contexts"]


def test_a_feature_without_explanations_has_empty_lists(client: TestClient, s: Seeded) -> None:
    doc = client.get(f"/api/v1/saes/tiny/features/{s.e}").json()
    assert doc["explanations"] == [] and doc["failed_explanations"] == []


# --- the feature list ------------------------------------------------------------------------------------------------


def test_the_feature_list_carries_the_latest_explanation_and_sorts_by_score(client: TestClient, s: Seeded) -> None:
    reply = client.get("/api/v1/saes/tiny/features", params={"sort": "simulation", "order": "desc", "limit": 500})
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert [i["index"] for i in items[:2]] == [s.a, s.b]  # 0.5 (llm-b, the latest), 0.2; no score: last
    assert items[0]["explanation"] == f"<b>{WORD}</b> & friends"
    assert items[0]["scores"] == {"simulation": 0.5, "detection": None, "fuzzing": None}
    by_index = {i["index"]: i for i in items}
    assert by_index[s.c]["explanation"] is None and by_index[s.c]["scores"] is None  # failed: no explanation
    assert by_index[s.d]["explanation"] == "lazy dog"
    ascending = client.get("/api/v1/saes/tiny/features", params={"sort": "simulation", "order": "asc"}).json()
    assert [i["index"] for i in ascending["items"][:2]] == [s.b, s.a]  # nulls last in both orders
    fuzz = client.get("/api/v1/saes/tiny/features", params={"sort": "fuzzing", "order": "desc"}).json()
    assert fuzz["items"][0]["index"] == s.b


def test_the_feature_list_q_matches_explanation_text(client: TestClient, s: Seeded) -> None:
    found = client.get("/api/v1/saes/tiny/features", params={"q": WORD}).json()
    assert [i["index"] for i in found["items"]] == [s.a]  # the failed attempt's raw answer is not searched here
    assert client.get("/api/v1/saes/tiny/features", params={"q": "ZEBRACORN</B>"}).json()["total"] == 1
    assert client.get("/api/v1/saes/tiny/features", params={"sort": "vibes"}).status_code == 422


# --- the explanation list --------------------------------------------------------------------------------------------


def test_the_list_pages_every_explanation(client: TestClient, s: Seeded) -> None:
    doc = client.get("/api/v1/saes/tiny/explanations").json()
    assert doc["total"] == 4  # a twice, b, d; the failed attempt is not an explanation
    assert [(i["feature"], i["llm"]) for i in doc["items"]] == sorted(
        [(s.a, "llm-b"), (s.a, "llm-a"), (s.b, "llm-a"), (s.d, "llm-a")], key=lambda x: x[0])  # fmt: skip
    first = doc["items"][0]
    assert set(first) >= {"feature", "text", "llm", "prompt_version", "scores", "created_at", "status"}
    assert first["status"] == "ok" and first["raw"] is None and first["error"] is None
    page = client.get("/api/v1/saes/tiny/explanations", params={"limit": 1, "offset": 3}).json()
    assert page["total"] == 4 and [i["feature"] for i in page["items"]] == [s.d]
    only_b = client.get("/api/v1/saes/tiny/explanations", params={"llm": "llm-b"}).json()
    assert [i["feature"] for i in only_b["items"]] == [s.a]


def test_the_list_searches_and_sorts_by_each_score(client: TestClient, s: Seeded) -> None:
    def features(**params: Any) -> list[tuple[int, str]]:
        reply = client.get("/api/v1/saes/tiny/explanations", params=params)
        assert reply.status_code == 200, reply.text
        return [(i["feature"], i["llm"]) for i in reply.json()["items"]]

    assert features(sort="simulation") == [(s.a, "llm-a"), (s.a, "llm-b"), (s.b, "llm-a"), (s.d, "llm-a")]
    assert features(sort="simulation", order="asc") == [(s.b, "llm-a"), (s.a, "llm-b"), (s.a, "llm-a"), (s.d, "llm-a")]
    assert features(sort="detection")[:2] == [(s.a, "llm-a"), (s.b, "llm-a")]  # 0.9, 0.6, then nulls
    assert features(sort="fuzzing")[0] == (s.b, "llm-a")
    assert features(sort="created_at", order="desc")[0] == (s.d, "llm-a")  # the damaged row was written last
    assert sorted(features(q=WORD)) == [(s.a, "llm-a"), (s.a, "llm-b")]
    assert features(q="100%") == [] and features(q="_") == []  # LIKE wildcards are literal


def test_the_list_shows_failed_attempts_on_request(client: TestClient, s: Seeded) -> None:
    [failed] = client.get("/api/v1/saes/tiny/explanations", params={"status": "failed"}).json()["items"]
    assert (failed["feature"], failed["text"], failed["raw"]) == (s.c, None, f"garbled {WORD} answer")
    assert failed["scores"] == {"simulation": None, "detection": None, "fuzzing": None}
    everything = client.get("/api/v1/saes/tiny/explanations", params={"status": "all", "q": WORD}).json()
    assert sorted(i["status"] for i in everything["items"]) == ["failed", "ok", "ok"]  # raw answers match too
    assert client.get("/api/v1/saes/tiny/explanations", params={"status": "error"}).json()["total"] == 0


# --- distributions ---------------------------------------------------------------------------------------------------


def bin_of(value: float, lo: float, hi: float, bins: int) -> int:
    return min(int((value - lo) / (hi - lo) * bins), bins - 1)


def test_the_summary_with_a_random_baseline(client: TestClient) -> None:
    reply = client.get("/api/v1/saes/tiny/explanations/summary")
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert (doc["sae"], doc["features"], doc["attempts"]) == ("tiny", 3, {"ok": 4, "failed": 1, "error": 0})
    sim = doc["scores"]["simulation"]  # latest per feature: a 0.5 (llm-b), b 0.2, d NaN/NULL (not counted)
    assert (sim["n"], sim["mean"], sim["median"]) == (2, pytest.approx(0.35), pytest.approx(0.35))
    assert sim["std"] == pytest.approx(statistics.stdev([0.5, 0.2]))
    half = Z * statistics.stdev([0.5, 0.2]) / math.sqrt(2)
    assert (sim["low"], sim["high"]) == (pytest.approx(0.35 - half), pytest.approx(0.35 + half))
    hist = sim["histogram"]
    assert (hist["min"], hist["max"], hist["bins"], sum(hist["counts"])) == (-1.0, 1.0, 20, 2)
    assert [i for i, c in enumerate(hist["counts"]) if c] == [bin_of(0.2, -1, 1, 20), bin_of(0.5, -1, 1, 20)]
    det = doc["scores"]["detection"]  # a's latest detection failed (null): only b's 0.6
    assert (det["n"], det["mean"], det["std"], det["low"]) == (1, pytest.approx(0.6), None, None)
    assert doc["scores"]["fuzzing"]["histogram"]["counts"][bin_of(0.7, 0, 1, 20)] == 1
    base = doc["baseline"]
    assert (base["sae"], base["features"]) == ("tiny-random", 2)
    assert base["scores"]["simulation"]["mean"] == pytest.approx(-0.05)
    assert base["scores"]["detection"]["median"] == pytest.approx(0.5)
    assert base["scores"]["fuzzing"]["n"] == 0 and base["scores"]["fuzzing"]["mean"] is None


def test_the_summary_by_llm_and_bins(client: TestClient) -> None:
    doc = client.get("/api/v1/saes/tiny/explanations/summary", params={"llm": "llm-a", "bins": 4}).json()
    sim = doc["scores"]["simulation"]  # llm-a's: a 0.8, b 0.2
    assert (doc["llm"], sim["n"], sim["mean"]) == ("llm-a", 2, pytest.approx(0.5))
    assert sim["histogram"]["counts"] == [0, 0, 1, 1]
    assert doc["attempts"] == {"ok": 3, "failed": 1, "error": 0}


def test_the_summary_without_a_baseline_or_explanations(client: TestClient) -> None:
    doc = client.get("/api/v1/saes/lone/explanations/summary").json()
    assert (doc["features"], doc["baseline"]) == (0, None)
    for kind, stats in doc["scores"].items():
        assert (stats["n"], stats["mean"], stats["median"], stats["low"]) == (0, None, None, None), kind
        assert stats["histogram"]["counts"] == [0] * 20
    baseline = client.get("/api/v1/saes/tiny-random/explanations/summary").json()
    assert baseline["baseline"] is None and baseline["features"] == 2  # a baseline has no baseline of its own


def test_a_sweep_pools_scores_per_architecture(client: TestClient) -> None:
    reply = client.get("/api/v1/sweeps/sw/explanations")
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert [(g["name"], g["kind"], g["saes"]) for g in doc["groups"]] == [
        ("jumprelu", "architecture", ["tiny"]), ("random baseline", "baseline", ["tiny-random"])]  # fmt: skip
    jump, base = doc["groups"]  # topk's only SAE has no explanations: no group
    assert jump["features"] == 3 and jump["scores"]["simulation"]["mean"] == pytest.approx(0.35)
    assert base["scores"]["simulation"]["n"] == 2 and base["scores"]["simulation"]["mean"] == pytest.approx(-0.05)
    assert [x["sae"] for x in doc["saes"]] == ["tiny", "tiny-random"]


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/saes/nope/explanations", "/api/v1/saes/nope/explanations/summary",
                                  "/api/v1/sweeps/nope/explanations", "/api/v1/sweeps/no%00pe/explanations",
                                  "/api/v1/saes/NO%00PE/explanations"])  # fmt: skip
def test_unknown_names_are_404(client: TestClient, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404 and reply.json()["detail"], reply.text


@pytest.mark.parametrize("params", [{"sort": "vibes"}, {"order": "up"}, {"status": "meh"}, {"limit": 0},
                                    {"limit": 501}, {"offset": -1}, {"q": "a\x00b"}, {"q": "x" * 201},
                                    {"llm": "a\x00"}])  # fmt: skip
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    reply = client.get("/api/v1/saes/tiny/explanations", params=params)
    assert reply.status_code == 422 and reply.json()["detail"], reply.text


@pytest.mark.parametrize("params", [{"bins": 0}, {"bins": 201}, {"bins": "many"}, {"llm": "x\x00"}])
def test_bad_summary_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    for path in ["/api/v1/saes/tiny/explanations/summary", "/api/v1/sweeps/sw/explanations"]:
        reply = client.get(path, params=params)
        assert reply.status_code == 422 and reply.json()["detail"], reply.text


def test_the_openapi_document_names_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/v1/saes/{sae}/explanations", "/api/v1/saes/{sae}/explanations/summary",
                 "/api/v1/sweeps/{sweep}/explanations"]:  # fmt: skip
        assert "get" in paths[path]
