"""A rating's input cannot break reads for everyone, nor land half-written, on SQLite and Postgres.

`shown` (free-form JSON of what the rater saw) is checked once, by RatingIn, for the JSON API and the
no-JS form alike: nested at most 20 deep, finite numbers, valid Unicode, 100,000 characters of JSON;
anything else is a 422 and nothing is written. Every read that shows ratings survives whatever a row
already holds (rows written below straight with SQL, past every check), and a rating is stored in
one transaction: it lands whole or not at all.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from app.core.database import session_scope
from app.core.tables import Rating, SAERow
from app.ratings.schemas import RatingIn
from app.ratings.store import store_rating
from tests.app.test_api import make_client

DEEP = '{"a":' * 300 + "1" + "}" * 300
"""JSON nested 300 deep."""


@pytest.fixture(scope="module")
def app_client(shared_index: Any) -> Any:
    url, _, _, folder = shared_index
    with make_client(url, folder) as c:
        yield c


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    app_client.cookies.clear()
    return app_client


@pytest.fixture
def engine(shared_index: Any) -> Engine:
    engine: Engine = shared_index[1]
    return engine


def count(engine: Engine, index: int) -> int:
    with session_scope(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Rating).where(Rating.feature_index == index)) or 0)


def one_line_422(reply: Any) -> str:
    assert reply.status_code == 422, (reply.status_code, reply.text[:300])
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return str(detail)


# (the raw JSON of `shown`, what the 422 says): JSON text, so NaN and lone surrogates go over the wire as such
HOSTILE_SHOWN = [
    (DEEP, "nest at most 20"),
    ('{"s": "\\ud800"}', "valid Unicode"),
    ('{"s": "ok \\udfff and more"}', "valid Unicode"),
    ('{"\\ud800": 1}', "valid Unicode"),
    ('{"x": [1, {"y": "\\ud83d"}]}', "valid Unicode"),
    ('{"x": NaN}', "finite"),
    ('{"x": Infinity}', "finite"),
    ('{"x": [-Infinity]}', "finite"),
    ('{"x": 1e400}', "finite"),
    (json.dumps({"x": "a" * 100_001}), "100,000 characters"),
]


def test_the_json_api_refuses_hostile_shown_and_writes_nothing(client: TestClient, engine: Engine) -> None:
    url = "/api/v1/saes/tiny/features/11/ratings"
    for shown, says in HOSTILE_SHOWN:
        body = '{"rater": "hostile", "label": "yes", "shown": ' + shown + "}"
        reply = client.post(url, content=body, headers={"content-type": "application/json"})
        detail = one_line_422(reply)
        assert "shown" in detail and says in detail, (shown[:40], detail)
    # the other text fields are valid Unicode too (SQLite and Postgres cannot store a lone surrogate)
    for field in ["note", "study_id"]:
        body = '{"rater": "hostile", "label": "yes", "' + field + '": "a\\ud800b"}'
        reply = client.post(url, content=body, headers={"content-type": "application/json"})
        assert "valid Unicode" in one_line_422(reply)
    assert count(engine, 11) == 0
    # what a rater legitimately records still lands, and reads back as sent
    fine: dict[str, Any] = {
        "view": "feature",
        "ids": [1, 2],
        "nested": {"deep": [[{"x": 1.5}]]},
        "text": "Zoë 😀 \u202e",
    }
    reply = client.post(url, json={"rater": "fine", "label": "yes", "shown": fine})
    assert reply.status_code == 201 and reply.json()["shown"] == fine
    [listed] = client.get(url).json()
    assert listed["shown"] == fine


def test_the_no_js_form_refuses_hostile_shown_and_writes_nothing(client: TestClient, engine: Engine) -> None:
    page = client.get("/saes/tiny/features/12")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    form = {"csrf": match.group(1), "rater": "former", "label": "no"}
    url = "/saes/tiny/features/12/rate"
    for shown, says in [*HOSTILE_SHOWN, ("[" * 100_000 + "]" * 100_000, "nest at most 20")]:
        reply = client.post(url, data={**form, "shown": shown}, follow_redirects=False)
        assert reply.status_code == 422, (shown[:40], reply.status_code)
        assert "Rating not saved" in reply.text and says in reply.text, shown[:40]
    assert count(engine, 12) == 0
    stored = client.post(url, data={**form, "shown": '{"view": "feature"}'}, follow_redirects=False)
    assert stored.status_code == 303
    assert client.get("/api/v1/saes/tiny/features/12/ratings").json()[0]["shown"] == {"view": "feature"}


def test_a_rating_lands_whole_or_not_at_all(engine: Engine) -> None:
    """A write that fails part-way leaves nothing behind (pysqlite once committed a savepoint's insert)."""
    unstorable = RatingIn.model_construct(rater="atomic", label="yes", note="a\ud800b", study_id="", blinded=False,
                                          shown={}, presentation_order=None, time_spent_ms=None)  # fmt: skip
    with pytest.raises(Exception), session_scope(engine) as session:  # noqa: B017 (the driver's own error)
        store_rating(session, sae="tiny", index=13, body=unstorable, rater=None)
    assert count(engine, 13) == 0
    good = RatingIn(rater="atomic", label="maybe", note="first")
    with session_scope(engine) as session:
        first = store_rating(session, sae="tiny", index=13, body=good, rater=None)
    assert first.created
    with pytest.raises(Exception), session_scope(engine) as session:  # noqa: B017
        store_rating(session, sae="tiny", index=13, body=unstorable, rater=None)
    with session_scope(engine) as session:
        [row] = session.scalars(select(Rating).where(Rating.feature_index == 13)).all()
        assert (row.id, row.label, row.note) == (first.id, "maybe", "first")
    with session_scope(engine) as session:
        again = store_rating(session, sae="tiny", index=13, body=RatingIn(rater="atomic", label="no"), rater=None)
    assert (again.id, again.created) == (first.id, False)
    assert count(engine, 13) == 1


# Stored `shown` values no check lets in any more, as JSON text: (text, what reads serve, the one backend that
# can hold it or None); DEEP reads back cut at 20 levels.
STORED = [
    (DEEP, None, None),
    ("[" * 3000 + "]" * 3000, {}, None),
    ('{"x": 1e400, "y": -1e400, "z": 1e-400}', {"x": None, "y": None, "z": 0.0}, "sqlite"),  # Python reads inf
    ('{"x": 1e400, "y": -1e400}', {"x": 10**400, "y": -(10**400)}, "postgres"),  # jsonb keeps it exact
    ("[1, 2]", {"value": [1, 2]}, None),
    ('"just text"', {"value": "just text"}, None),
    ("null", {}, None),
    ('{"x": NaN, "y": [Infinity, -Infinity]}', {"x": None, "y": [None, None]}, "sqlite"),
    ('{"s": "\\ud800", "\\udfff": 1}', {"s": "\ufffd", "\ufffd": 1}, "sqlite"),
    ("{", {}, "sqlite"),
    ("not json at all", {}, "sqlite"),
]


def test_reads_survive_any_stored_rating(client: TestClient, engine: Engine) -> None:
    index = 14
    sqlite = engine.dialect.name == "sqlite"
    cases = [(stored, served) for stored, served, only in STORED if only in (None, engine.dialect.name)]
    with session_scope(engine) as session:
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        ids = []
        for n, _ in enumerate(cases):
            rating = Rating(sae_id=sae_id, feature_index=index, rater=f"stored{n}", label="yes",
                            note="=1+1" if n == 0 else "", shown={})  # fmt: skip
            session.add(rating)
            session.flush()
            ids.append(rating.id)
    value = ":shown" if sqlite else "CAST(:shown AS JSONB)"
    with engine.begin() as conn:
        for rating_id, (stored, _) in zip(ids, cases, strict=True):
            conn.execute(text(f"UPDATE ratings SET shown = {value} WHERE id = :id"), {"shown": stored, "id": rating_id})
    client.cookies.set("jumpscope_rater", "reader")
    for url in ["/api/v1/saes/tiny/ratings.csv", f"/api/v1/saes/tiny/features/{index}", "/api/v1/saes/tiny",
                "/api/v1/saes", f"/saes/tiny/features/{index}", "/saes/tiny", "/", "/rate?saes=tiny",
                "/saes/tiny/rate", "/api/v1/saes/tiny/features?label=yes"]:  # fmt: skip
        reply = client.get(url)
        assert reply.status_code == 200, (url, reply.text[:300])
    listed = client.get(f"/api/v1/saes/tiny/features/{index}/ratings")
    assert listed.status_code == 200, listed.text[:300]
    by_id = {r["id"]: r["shown"] for r in listed.json()}
    for rating_id, (stored, served) in zip(ids, cases, strict=True):
        if served is None:  # nested too deep to serve whole: cut at 20 levels
            shown = by_id[rating_id]
            for _ in range(19):
                shown = shown["a"]
            assert shown == {"a": None}
        else:
            assert by_id[rating_id] == served, stored[:40]
    csv_text = client.get("/api/v1/saes/tiny/ratings.csv").text
    assert all(f"stored{n}" in csv_text for n in range(len(cases)))


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return digits[n] if n < 36 else base36(n // 36) + digits[n % 36]


def test_the_rating_queue_bounds_its_list_of_saes(client: TestClient) -> None:
    """/rate?saes=... takes at most 20 SAE names, de-duplicated in linear time (no quadratic scan of 12,000)."""

    def timed(url: str) -> tuple[float, Any]:
        started = time.perf_counter()
        reply = client.get(url)
        return time.perf_counter() - started, reply

    few = min(timed("/rate?study=s&saes=" + ",".join(base36(i) for i in range(21)))[0] for _ in range(2))
    took, reply = timed("/rate?study=s&saes=" + ",".join(base36(i) for i in range(12_000)))
    assert reply.status_code == 422 and "at most 20 SAEs" in reply.text
    assert took - few < 0.5, (took, few)  # the quadratic scan of 12,000 names took 1.8 s more
    reply = client.get("/rate", params=[("saes", f"x{i}") for i in range(21)])
    assert reply.status_code == 422 and "at most 20 SAEs" in reply.text
    twenty = client.get("/rate?saes=" + ",".join(f"x{i % 20}" for i in range(8_000)))
    assert twenty.status_code == 404 and "No such SAE" in twenty.text  # 20 distinct names pass the bound
    client.cookies.set("jumpscope_rater", "queuer")
    same = client.get("/rate?saes=" + ",".join(["tiny"] * 8_000))
    assert same.status_code == 200 and 'id="rate-form"' in same.text  # a queue over one SAE
