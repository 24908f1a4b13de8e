"""Humans against the machine on a real store (SQLite and Postgres): explanations and scores stored through the
explanation store (app.interp.store.save_explanation), ratings through the rating API; the study's API, CSV and
page show each feature's explanation and scores beside the human verdicts, and the AUC of each score."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.database import session_scope
from app.core.tables import SAERow, ScoreKind
from app.interp.store import ScoreRecord, save_explanation
from tests.app.studies.conftest import FIG6, STUDY, Store, post_ratings
from tests.app.test_api import make_client

LLM, PROMPT = "test-llm", "v1"
# (sae, index) -> scores: see test_the_auc_of_each_score for the hand computation.
SCORES: dict[tuple[str, int], dict[ScoreKind, float | None]] = {
    ("tiny", 0): {"simulation": 0.8, "detection": 0.6},
    ("tiny", 1): {"simulation": 0.5, "detection": 0.9},
    ("tiny", 2): {"simulation": 0.1, "detection": None},
    ("tiny-topk", 0): {"simulation": 0.5},
}


def explain(store: Store) -> None:
    """Store an explanation with scores for each feature of SCORES, and a failed attempt for tiny-b 5."""
    _, engine, _ = store
    with session_scope(engine) as session:
        ids = dict(session.execute(select(SAERow.name, SAERow.id)).all())
        for (sae, index), scores in SCORES.items():
            records = [ScoreRecord(kind=kind, score=score, n=10, failures=0, scored_ids=(), raw=(), llm=LLM,
                                   prompt_version=PROMPT) for kind, score in scores.items()]  # fmt: skip
            save_explanation(session, sae_id=ids[sae], run_id=None, feature_index=index, llm=LLM,
                             prompt_version=PROMPT, status="ok", text=f"explained {sae} {index}", raw="",
                             scores=records)  # fmt: skip
        save_explanation(session, sae_id=ids["tiny-b"], run_id=None, feature_index=5, llm=LLM, prompt_version=PROMPT,
                         status="failed", text=None, raw="no idea", error="no explanation in the answer")  # fmt: skip


@pytest.fixture(scope="module")
def client(study_store: Store) -> Iterator[TestClient]:
    url, _, folder = study_store
    with make_client(url, folder) as c:
        post_ratings(c.post, STUDY, FIG6)
        explain(study_store)
        yield c


def test_the_auc_of_each_score(client: TestClient) -> None:
    doc = client.get(f"/api/v1/studies/{quote(STUDY, safe='')}").json()
    assert doc["explained"] == 4  # tiny-b 5 has only a failed attempt; tiny-topk 1 none
    machine = {m["score"]: m for m in doc["machine"]}
    assert set(machine) == {"simulation", "detection"}
    # simulation: "yes" ratings at 0.8, 0.8, 0.5; the others at 0.5 (maybe), 0.1, 0.5, 0.5 (the two no's of
    # tiny-topk 0). Pairs: each 0.8 beats all four (8), the 0.5 ties three and beats one (2.5): 10.5 / 12.
    sim = machine["simulation"]
    assert (sim["features"], sim["ratings"], sim["yes"]) == (4, 7, 3) and sim["auc"] == pytest.approx(10.5 / 12)
    # detection (tiny 2 has none): "yes" at 0.6, 0.6, 0.9; "maybe" at 0.9: only the tie counts, 0.5 / 3.
    det = machine["detection"]
    assert (det["features"], det["ratings"], det["yes"]) == (2, 4, 3) and det["auc"] == pytest.approx(0.5 / 3)


def test_each_feature_shows_its_explanation_beside_the_verdicts(client: TestClient) -> None:
    features = {(f["sae"], f["index"]): f for f in client.get(f"/api/v1/studies/{quote(STUDY, safe='')}").json()[
        "features_list"]}  # fmt: skip
    first = features[("tiny", 0)]
    assert first["machine"] == {"explanation": "explained tiny 0", "llm": LLM,
                                "scores": {"simulation": 0.8, "detection": 0.6, "fuzzing": None}}  # fmt: skip
    assert [v["label"] for v in first["verdicts"]] == ["yes", "yes"]
    assert features[("tiny-b", 5)]["machine"] is None and features[("tiny-topk", 1)]["machine"] is None


def test_the_downloads_carry_the_scores(client: TestClient) -> None:
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/studies/{quote(STUDY, safe='')}.csv").text)))
    by_key = {(r["sae"], r["feature_index"], r["rater"]): r for r in rows}
    assert by_key[("tiny", "1", "bob")]["explanation"] == "explained tiny 1"
    assert float(by_key[("tiny", "1", "bob")]["detection"]) == pytest.approx(0.9)
    assert by_key[("tiny", "2", "alice")]["detection"] == "" and by_key[("tiny-b", "5", "carol")]["explanation"] == ""


def test_the_page_shows_the_aucs_and_the_explanations(client: TestClient) -> None:
    page = client.get(f"/studies/{quote(STUDY)}").text
    table = page.split('id="machine-auc"')[1].split("</table>")[0]
    assert "simulation" in table and "0.875" in table and "0.167" in table
    assert "explained tiny-topk 0" in page and "0.80" in page


def test_without_explanations_the_page_says_how_to_get_them(client: TestClient) -> None:
    post_ratings(client.post, "unexplained", [("tiny", 30, "ivy", "yes", "")])
    page = client.get("/studies/unexplained").text
    assert 'id="machine-none"' in page and "jumpscope explain" in page
    assert client.get("/api/v1/studies/unexplained").json()["machine"] == []
