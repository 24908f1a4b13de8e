"""The REST API through FastAPI's test client, on SQLite and Postgres: happy paths and errors."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app.auth.tokens import add_token
from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Job, Rating
from app.server import create_app
from tests.app.conftest import D_SAE


def make_client(db_url: str, tmp_path: Path, **settings: Any) -> TestClient:
    base: dict[str, Any] = dict(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs",
                                device="cpu", encode_max_tokens=64, encode_window_ms=2.0)  # fmt: skip
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(shared_index: Any) -> Any:
    """One app per backend for the module (its tests use their own features and raters)."""
    url, _, _, folder = shared_index
    with make_client(url, folder) as c:
        yield c


@pytest.fixture
def indexed(shared_index: Any) -> tuple[Engine, Any]:
    _, engine, sae, _ = shared_index
    return engine, sae


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "encoder": "ok"}
    doc = client.get("/openapi.json").json()
    for path in ["/api/v1/saes", "/api/v1/saes/{sae}/features/{index}", "/api/v1/saes/{sae}/encode",
                 "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/saes/{sae}/ratings.csv"]:  # fmt: skip
        assert path in doc["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "http" not in docs.text.split("<body>")[0].replace("http-equiv", "")
    for asset in [u for u in docs.text.split('"') if u.startswith("/static-offline-docs/")]:
        assert client.get(asset).status_code == 200, asset  # served locally: /docs works offline


def test_saes(client: TestClient) -> None:
    [summary] = client.get("/api/v1/saes").json()
    assert summary["name"] == "tiny" and summary["d_sae"] == D_SAE and summary["indexed_tokens"] >= 1500
    detail = client.get("/api/v1/saes/tiny").json()
    hist = detail["frequency_histogram"]
    assert sum(hist["counts"]) + hist["dead"] == D_SAE
    assert detail["index"]["params"]["top_k"] == 4
    for bad in ["nope", "NOPE", "a%00b", "x" * 300]:
        reply = client.get(f"/api/v1/saes/{bad}")
        assert reply.status_code == 404, bad
        assert "no SAE named" in reply.json()["detail"]


def test_feature_list_sorts_filters_searches_and_pages(client: TestClient) -> None:
    page = client.get("/api/v1/saes/tiny/features", params={"limit": 7}).json()
    assert page["total"] == D_SAE and [f["index"] for f in page["items"]] == list(range(7))
    by_freq = client.get("/api/v1/saes/tiny/features", params={"sort": "frequency", "order": "desc",
                                                               "limit": 500}).json()["items"]  # fmt: skip
    freqs = [f["frequency"] for f in by_freq]
    assert freqs == sorted(freqs, reverse=True)
    mid = freqs[D_SAE // 2]
    some = client.get("/api/v1/saes/tiny/features", params={"min_frequency": mid, "limit": 500}).json()
    assert some["total"] == sum(f >= mid for f in freqs)
    second = client.get("/api/v1/saes/tiny/features", params={"offset": 7, "limit": 7}).json()["items"]
    assert [f["index"] for f in second] == list(range(7, 14))
    live = next(f for f in by_freq if f["top_text"].strip())
    word = max(live["top_text"].split(), key=len)
    found = client.get("/api/v1/saes/tiny/features", params={"q": word, "limit": 500}).json()
    assert live["index"] in [f["index"] for f in found["items"]]
    assert client.get("/api/v1/saes/tiny/features", params={"q": "zzqqxx-not-there"}).json()["total"] == 0
    for bad in [{"limit": 0}, {"limit": 501}, {"sort": "bogus"}, {"min_frequency": 2}, {"offset": -1},
                {"order": "up"}, {"label": "perhaps"}, {"min_frequency": "nan"}]:  # fmt: skip
        assert client.get("/api/v1/saes/tiny/features", params=bad).status_code == 422, bad
    assert client.get("/api/v1/saes/nope/features").status_code == 404


def test_feature_detail(client: TestClient) -> None:
    items = client.get("/api/v1/saes/tiny/features", params={"sort": "frequency", "order": "desc"}).json()["items"]
    index = items[0]["index"]
    detail = client.get(f"/api/v1/saes/tiny/features/{index}").json()
    assert detail["index"] == index and not detail["dead"]
    assert len(detail["top_positive_tokens"]) == 10 and len(detail["similar"]) == 10
    top = detail["top_examples"]
    assert top and top[0]["max_value"] == pytest.approx(detail["max_activation"], rel=1e-5)
    for example in top:
        assert len(example["tokens"]) == len(example["values"]) == len(example["token_ids"])
        assert example["values"][example["max_position"]] == pytest.approx(example["max_value"], rel=1e-3)
    assert all(b["min"] <= e["max_value"] <= b["max"] for b in detail["bands"] for e in b["examples"])
    assert sum(detail["histogram"]["counts"]) == detail["fire_count"]
    for bad in [D_SAE, -1, 10**12]:
        reply = client.get(f"/api/v1/saes/tiny/features/{bad}")
        assert reply.status_code == 404 and "no feature" in reply.json()["detail"]
    assert client.get("/api/v1/saes/tiny/features/abc").status_code == 422


def test_ratings_create_edit_list_and_csv(client: TestClient, indexed: tuple[Engine, Any]) -> None:
    url = "/api/v1/saes/tiny/features/3/ratings"
    created = client.post(url, json={"rater": "ann", "label": "yes", "note": "fires on 'fox'"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["rater"] == "ann" and body["label"] == "yes" and body["feature_index"] == 3
    edited = client.post(url, json={"rater": "ann", "label": "no", "note": "on reflection, no"})
    assert edited.status_code == 200 and edited.json()["id"] == body["id"]
    assert edited.json()["updated_at"] >= body["updated_at"]
    client.post(url, json={"rater": "bob", "label": "maybe", "study_id": "s1", "blinded": True,
                           "shown": {"examples": [1, 2]}, "presentation_order": 4})  # fmt: skip
    listed = client.get(url).json()
    assert [(r["rater"], r["label"]) for r in listed] == [("ann", "no"), ("bob", "maybe")]
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/saes/tiny/ratings.csv").text)))
    assert [(r["rater"], r["label"], r["study_id"]) for r in rows] == [("ann", "no", ""), ("bob", "maybe", "s1")]
    assert client.get("/api/v1/saes/tiny/features", params={"q": "reflection"}).json()["total"] == 1
    assert [
        f["index"] for f in client.get("/api/v1/saes/tiny/features", params={"label": "maybe"}).json()["items"]
    ] == [3]
    by_rating = client.get("/api/v1/saes/tiny/features", params={"sort": "rating", "order": "desc"}).json()
    assert by_rating["items"][0]["index"] == 3 and by_rating["items"][0]["ratings"]["total"] == 2
    engine, _ = indexed
    with session_scope(engine) as session:
        assert len(session.scalars(select(Rating).where(Rating.feature_index == 3)).all()) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"rater": "ann", "label": "perhaps"}, 422),
        ({"rater": "ann", "label": "yes", "note": "x" * 2001}, 422),
        ({"rater": "", "label": "yes"}, 422),
        ({"rater": "a\x00b", "label": "yes"}, 422),
        ({"rater": "ann", "label": "yes", "extra": 1}, 422),
        ({"rater": "ann", "label": "yes", "time_spent_ms": -1}, 422),
    ],
)
def test_rating_errors(client: TestClient, body: dict[str, Any], status: int) -> None:
    reply = client.post("/api/v1/saes/tiny/features/3/ratings", json=body)
    assert reply.status_code == status, reply.text
    assert "detail" in reply.json()


def test_rating_without_a_name_is_anonymous_while_writes_are_open(client: TestClient) -> None:
    reply = client.post("/api/v1/saes/tiny/features/11/ratings", json={"label": "maybe"})
    assert reply.status_code == 201 and reply.json()["rater"] == "anonymous"


def test_nul_characters_in_shown_are_stored_as_replacement_characters(client: TestClient) -> None:
    body = {"rater": "zed", "label": "no", "shown": {"k\x00": ["a\x00b", {"x": "\x00"}]}}
    reply = client.post("/api/v1/saes/tiny/features/12/ratings", json=body)
    assert reply.status_code == 201, reply.text
    assert reply.json()["shown"] == {"k\ufffd": ["a\ufffdb", {"x": "\ufffd"}]}


def test_rating_unknown_targets(client: TestClient) -> None:
    assert client.post("/api/v1/saes/tiny/features/999/ratings", json={"rater": "a", "label": "yes"}).status_code == 404
    assert client.post("/api/v1/saes/nope/features/1/ratings", json={"rater": "a", "label": "yes"}).status_code == 404
    assert client.get("/api/v1/saes/nope/ratings.csv").status_code == 404


def test_tokens_name_the_rater_and_guard_jobs(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    engine, _ = registered  # its own store: tokens change the rules for every write
    with session_scope(engine) as session:
        rater = add_token(session, "carol")
        boss = add_token(session, "dana", admin=True)
    with make_client(db_url, tmp_path) as client:
        url = "/api/v1/saes/tiny/features/2/ratings"
        assert client.post(url, json={"label": "yes"}).status_code == 401
        bad = client.post(url, json={"label": "yes"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        good = client.post(url, json={"rater": "mallory", "label": "yes"}, headers={"Authorization": f"Bearer {rater}"})
        assert good.status_code == 201 and good.json()["rater"] == "carol"
        job = {"kind": "index", "params": {"sae": "tiny", "tokens": 100}}
        assert client.post("/api/v1/jobs", json=job, headers={"Authorization": f"Bearer {rater}"}).status_code == 403
        queued = client.post("/api/v1/jobs", json=job, headers={"Authorization": f"Bearer {boss}"})
        assert queued.status_code == 202
        assert client.get(f"/api/v1/jobs/{queued.json()['id']}").json()["status"] == "queued"  # reading is open


def test_jobs(client: TestClient, indexed: tuple[Engine, Any]) -> None:
    queued = client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "tiny", "tokens": 500}})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    job = client.get(f"/api/v1/jobs/{queued.json()['id']}").json()
    assert job["kind"] == "index" and job["params"]["tokens"] == 500 and job["progress"] == 0
    train = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": "new-sae", "model": "tiny-gemma2"}})
    assert train.status_code == 202
    recent = [j["id"] for j in client.get("/api/v1/jobs").json()]
    assert recent.index(train.json()["id"]) < recent.index(queued.json()["id"])
    assert client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "nope"}}).status_code == 404
    taken = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": "tiny"}})
    assert taken.status_code == 409 and "already registered" in taken.json()["detail"]
    for bad in [{"kind": "cook", "params": {}}, {"kind": "index", "params": {}},
                {"kind": "index", "params": {"sae": "tiny", "tokens": 0}},
                {"kind": "train", "params": {"name": "Bad Name"}},
                {"kind": "train", "params": {"name": "x", "width": 3}},
                {"kind": "index", "params": {"sae": "tiny", "bogus": 1}}]:  # fmt: skip
        reply = client.post("/api/v1/jobs", json=bad)
        assert reply.status_code == 422, (bad, reply.text)
    assert client.get("/api/v1/jobs/999999").status_code == 404
    assert client.get(f"/api/v1/jobs/{2**40}").status_code == 404
    engine, _ = indexed
    with session_scope(engine) as session:
        ids = {queued.json()["id"], train.json()["id"]}
        assert {j.id for j in session.scalars(select(Job).where(Job.id.in_(ids)))} == ids


def test_encode(client: TestClient, indexed: tuple[Engine, Any], tiny_model_dir: Path) -> None:
    from trainer.lm.models import load_model
    from trainer.lm.sites import harvest

    _, sae = indexed
    text = "the quick brown fox"
    reply = client.post("/api/v1/saes/tiny/encode", json={"text": text})
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["special"][0] and out["tokens"][0] == "<bos>" and len(out["activations"]) == len(out["token_ids"])
    lm = load_model(str(tiny_model_dir))
    with torch.no_grad():
        f = sae.encode(harvest(lm.model, torch.tensor([out["token_ids"]]), None, 1, "resid")[0])  # (T, F)
    for t, active in enumerate(out["activations"]):
        expected = {i: v for i, v in enumerate(f[t].tolist()) if v > 0}
        assert {a["index"] for a in active} == set(expected)
        values = [a["value"] for a in active]
        assert values == sorted(values, reverse=True)
        for a in active:
            assert a["value"] == pytest.approx(expected[a["index"]], rel=1e-4, abs=1e-5)
    top = client.post("/api/v1/saes/tiny/encode", json={"text": text, "top_k": 2, "include_bos": False}).json()
    assert len(top["tokens"]) == len(out["tokens"]) - 1 and all(len(a) <= 2 for a in top["activations"])
    dense = client.post("/api/v1/saes/tiny/encode", json={"text": text, "features": [0, 5]}).json()["features"]
    assert [d["index"] for d in dense] == [0, 5]
    torch.testing.assert_close(torch.tensor(dense[1]["values"]), f[:, 5], rtol=1e-4, atol=1e-5)
    many = client.post("/api/v1/saes/tiny/encode", json={"texts": [text, "lazy dog"]}).json()
    assert len(many["results"]) == 2 and many["results"][0]["token_ids"] == out["token_ids"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 422, ""),
        ({}, 422, "text"),
        ({"text": "a", "texts": ["b"]}, 422, "texts"),
        ({"texts": []}, 422, ""),
        ({"texts": ["ok", ""]}, 422, ""),
        ({"text": "word " * 200}, 422, "64"),
        ({"text": "hi", "top_k": 0}, 422, ""),
        ({"text": "hi", "top_k": D_SAE + 1}, 422, "top_k"),
        ({"text": "hi", "features": [D_SAE]}, 422, "feature"),
        ({"text": "hi", "features": [-1]}, 422, "feature"),
    ],
)
def test_encode_errors(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    reply = client.post("/api/v1/saes/tiny/encode", json=body)
    assert reply.status_code == status, reply.text
    assert message in str(reply.json()["detail"])


def test_encode_unknown_sae_and_body_limit(client: TestClient) -> None:
    assert client.post("/api/v1/saes/nope/encode", json={"text": "hi"}).status_code == 404
    huge = client.post("/api/v1/saes/tiny/encode", content=b'{"text": "' + b"a" * 2_000_000 + b'"}',
                       headers={"content-type": "application/json"})  # fmt: skip
    assert huge.status_code == 413


def test_encoder_unavailable_is_503(shared_index: Any, tmp_path: Path) -> None:
    with make_client(shared_index[0], tmp_path, worker_url="http://127.0.0.1:9") as client:
        assert client.get("/healthz").json()["encoder"] == "unavailable"
        reply = client.post("/api/v1/saes/tiny/encode", json={"text": "hi"})
        assert reply.status_code == 503 and "127.0.0.1:9" in reply.json()["detail"]


def test_unmigrated_database_fails_at_start(tmp_path: Path) -> None:
    from app.core.database import StoreError

    with pytest.raises(StoreError, match="jumpscope db upgrade"), make_client(f"sqlite:///{tmp_path}/x.db", tmp_path):
        pass
