"""The studies API on a real store (SQLite and Postgres), with ratings posted through the real rating API:
results per SAE and architecture, agreement, the unblinded list, CSV and JSON downloads, 404s and 422s."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.app.studies.conftest import FIG6, FORMULA_NOTE, HTML_NOTE, STUDY, Store, post_ratings
from tests.app.test_api import make_client

Z = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval by its textbook formula."""
    centre, half = k + Z * Z / 2, Z * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return (centre - half) / (n + Z * Z), (centre + half) / (n + Z * Z)


@pytest.fixture(scope="module")
def client(study_store: Store) -> Iterator[TestClient]:
    """One app per backend, with the study FIG6 and a one-rater study 'solo' rated through the API."""
    url, _, folder = study_store
    with make_client(url, folder) as c:
        post_ratings(c.post, STUDY, FIG6)
        post_ratings(c.post, "solo", [("tiny", 7, "dora", "yes", ""), ("tiny", 8, "dora", "no", "")], blinded=False)
        assert c.post("/api/v1/saes/tiny/features/9/ratings", json={"rater": "eve", "label": "yes"}).status_code == 201
        yield c


def path(study: str) -> str:
    return f"/api/v1/studies/{quote(study, safe='')}"


def test_results_per_sae_and_architecture(client: TestClient) -> None:
    reply = client.get(path(STUDY))
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert (doc["study"], doc["ratings"], doc["features"], doc["raters"], doc["blinded"]) == (
        STUDY, 9, 6, ["alice", "bob", "carol"], True)  # fmt: skip
    arch = {g["name"]: g for g in doc["by_architecture"]}
    assert list(arch) == ["jumprelu", "topk"]
    jump, topk = arch["jumprelu"], arch["topk"]
    assert (jump["saes"], jump["ratings"], jump["features"], jump["raters"]) == (["tiny", "tiny-b"], 6, 4, 3)
    assert (topk["saes"], topk["ratings"], topk["features"], topk["raters"]) == (["tiny-topk"], 3, 2, 2)
    for group, counts in [(jump, {"yes": 4, "maybe": 1, "no": 1}), (topk, {"yes": 0, "maybe": 1, "no": 2})]:
        assert [s["label"] for s in group["shares"]] == ["yes", "maybe", "no"]
        for share in group["shares"]:
            k, n = counts[share["label"]], group["ratings"]
            assert share["count"] == k and share["share"] == pytest.approx(k / n)
            assert (share["low"], share["high"]) == pytest.approx(wilson(k, n), abs=1e-9)
    sae = {g["name"]: g for g in doc["by_sae"]}
    assert list(sae) == ["tiny", "tiny-b", "tiny-topk"]
    assert (sae["tiny"]["architecture"], sae["tiny"]["ratings"], sae["tiny-b"]["ratings"]) == ("jumprelu", 5, 1)
    assert [s["count"] for s in sae["tiny"]["shares"]] == [3, 1, 1]


def test_agreement_over_features_rated_twice(client: TestClient) -> None:
    doc = client.get(path(STUDY)).json()
    overall = doc["agreement"]
    assert (overall["features"], overall["ratings"], overall["reason"]) == (3, 6, None)
    assert overall["nominal"] == pytest.approx(6 / 11) and overall["ordinal"] == pytest.approx(7 / 9)
    sae = {g["name"]: g["agreement"] for g in doc["by_sae"]}
    assert sae["tiny"]["nominal"] == pytest.approx(0.0)  # [yes, yes] and [yes, maybe]: no better than chance
    assert sae["tiny-topk"]["nominal"] is None and "no variation" in sae["tiny-topk"]["reason"]
    assert sae["tiny-b"]["nominal"] is None and "two or more raters" in sae["tiny-b"]["reason"]
    solo = client.get("/api/v1/studies/solo").json()["agreement"]
    assert solo["nominal"] is None and solo["ordinal"] is None and "two or more raters" in solo["reason"]


def test_the_unblinded_list(client: TestClient) -> None:
    features = client.get(path(STUDY)).json()["features_list"]
    assert [(f["sae"], f["index"]) for f in features] == [
        ("tiny", 0), ("tiny", 1), ("tiny", 2), ("tiny-b", 5), ("tiny-topk", 0), ("tiny-topk", 1)]  # fmt: skip
    assert features[0]["verdicts"] == [{"rater": "alice", "label": "yes", "note": HTML_NOTE},
                                       {"rater": "bob", "label": "yes", "note": ""}]  # fmt: skip
    assert features[4]["architecture"] == "topk"


def test_list_of_studies(client: TestClient) -> None:
    studies = {s["name"]: s for s in client.get("/api/v1/studies").json()}
    assert set(studies) == {STUDY, "solo"}  # ratings outside any study are no study
    fig6 = studies[STUDY]
    assert (fig6["ratings"], fig6["features"], fig6["raters"], fig6["blinded"]) == (9, 6, 3, True)
    assert fig6["saes"] == ["tiny", "tiny-b", "tiny-topk"] and fig6["architectures"] == ["jumprelu", "topk"]
    assert fig6["first_rated_at"] <= fig6["last_rated_at"]
    assert (studies["solo"]["ratings"], studies["solo"]["raters"], studies["solo"]["blinded"]) == (2, 1, False)


def test_csv_and_json_downloads_parse_back(client: TestClient) -> None:
    csv_reply = client.get(f"{path(STUDY)}.csv")
    assert csv_reply.status_code == 200 and csv_reply.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_reply.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(csv_reply.text)))
    json_reply = client.get(f"{path(STUDY)}.json")
    assert json_reply.status_code == 200 and "attachment" in json_reply.headers["content-disposition"]
    records = json_reply.json()
    expected = sorted((sae, index, rater, label) for sae, index, rater, label, _ in FIG6)
    for got in (rows, records):
        assert sorted((r["sae"], int(r["feature_index"]), r["rater"], r["label"]) for r in got) == expected
        assert {r["study"] for r in got} == {STUDY}
        assert {r["architecture"] for r in got if r["sae"] == "tiny-topk"} == {"topk"}
    bob = next(r for r in rows if r["note"].endswith(FORMULA_NOTE))
    assert bob["note"] == "'" + FORMULA_NOTE  # a formula is text in a spreadsheet
    assert next(r for r in records if r["note"].endswith(FORMULA_NOTE))["note"] == FORMULA_NOTE
    assert list(rows[0]) == list(records[0])  # the same columns
    assert client.get(path(STUDY), params={"format": "csv"}).text == csv_reply.text
    assert client.get(path(STUDY), params={"format": "json"}).json() == records


def test_unknown_study_is_404_and_bad_format_422(client: TestClient) -> None:
    for url in ["/api/v1/studies/nope", "/api/v1/studies/nope.csv", "/api/v1/studies/nope.json",
                "/api/v1/studies/nope?format=csv", "/api/v1/studies/", "/api/v1/studies/a%00b",
                "/api/v1/studies/a%00b.csv"]:  # fmt: skip
        reply = client.get(url)
        assert reply.status_code == 404, url
        assert "no rating carries the study name" in reply.json()["detail"]
    reply = client.get(path(STUDY), params={"format": "xml"})
    assert reply.status_code == 422 and "format" in reply.text


def test_a_study_named_like_a_download(client: TestClient) -> None:
    post_ratings(client.post, "notes.csv", [("tiny", 20, "fay", "maybe", "")])
    doc = client.get("/api/v1/studies/notes.csv").json()  # no study 'notes': this is the study 'notes.csv'
    assert doc["study"] == "notes.csv" and doc["ratings"] == 1
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/studies/notes.csv", params={"format": "csv"}).text)))
    assert [(r["study"], r["rater"]) for r in rows] == [("notes.csv", "fay")]


def test_openapi_documents_the_studies(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/studies", "/api/v1/studies/{study}", "/api/v1/studies/{study}.csv"} <= set(paths)
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "Wilson" in schemas["LabelShareOut"]["properties"]["low"]["description"]
    assert "ordinal" in schemas["AgreementOut"]["properties"]["ordinal"]["description"].lower()
