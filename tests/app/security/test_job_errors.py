"""Finding 4 of the attack, error texts: what jobs show readers without an admin token names no host path.

Through `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}` and the `/jobs` pages (TestClient on `create_app`,
SQLite and Postgres): with tokens configured, a reader without a token, with a rater's token or with an
unknown one sees every absolute path as `<path>`; an admin sees the full text; with no token configured
everyone is admin. One failure is a real one: a worker's index job over a missing file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.auth.tokens import add_token
from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import queue as jobs
from app.jobs.worker import Worker
from app.server import create_app

ERROR = "DatasetError: no such file or folder: /srv/secret/creds.json; give 'packaged', a local file or a Hub name"
REDACTED = "DatasetError: no such file or folder: <path>; give 'packaged', a local file or a Hub name"


def client_for(url: str, folder: Path, **settings: Any) -> TestClient:
    base: dict[str, Any] = dict(database_url=url, data_dir=folder / "data", runs_dir=folder / "runs", device="cpu")
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


def failed_job(engine: Engine) -> int:
    with session_scope(engine) as session:
        job = Job(kind="index", params={"sae": "tiny", "dataset": "/srv/datasets/corpus.jsonl"}, status="failed",
                  message="reading /srv/datasets/corpus.jsonl", error=ERROR,
                  result={"out": "/srv/runs/job-1", "sae": "tiny"}, metrics=[])  # fmt: skip
        session.add(job)
        session.flush()
        return job.id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_readers_without_an_admin_token_see_no_host_paths(store: Engine, db_url: str, tmp_path: Path) -> None:
    job_id = failed_job(store)
    with session_scope(store) as session:
        boss, rater = add_token(session, "boss", admin=True), add_token(session, "carol")
    with client_for(db_url, tmp_path) as client:
        for headers in ({}, bearer(rater), bearer("js_unknown")):
            one = client.get(f"/api/v1/jobs/{job_id}", headers=headers)
            assert one.status_code == 200
            [listed] = client.get("/api/v1/jobs", headers=headers).json()
            for view in (one.json(), listed):
                assert view["error"] == REDACTED
                assert view["message"] == "reading <path>"
                assert view["result"] == {"out": "<path>", "sae": "tiny"}
                assert view["params"]["dataset"] == "<path>" and view["params"]["sae"] == "tiny"
                assert "/srv" not in json.dumps(view)
            page = client.get(f"/jobs/{job_id}", headers=headers)
            assert page.status_code == 200 and "/srv/" not in page.text
            assert "no such file or folder: &lt;path&gt;" in page.text and "with an admin token" in page.text
            assert "/srv/" not in client.get("/jobs", headers=headers).text
        full = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(boss)).json()
        assert full["error"] == ERROR and full["result"]["out"] == "/srv/runs/job-1"
        assert full["params"]["dataset"] == "/srv/datasets/corpus.jsonl"
        assert client.get("/api/v1/jobs", headers=bearer(boss)).json()[0]["error"] == ERROR
        page = client.get(f"/jobs/{job_id}", headers=bearer(boss)).text
        assert "/srv/secret/creds.json" in page and "with an admin token" not in page


def test_with_no_token_configured_everyone_is_admin(store: Engine, db_url: str, tmp_path: Path) -> None:
    job_id = failed_job(store)
    with client_for(db_url, tmp_path) as client:
        assert client.get(f"/api/v1/jobs/{job_id}").json()["error"] == ERROR
        assert "/srv/secret/creds.json" in client.get(f"/jobs/{job_id}").text


def test_a_real_job_error_is_redacted_for_readers(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    engine, _ = registered
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    with session_scope(engine) as session:
        boss = add_token(session, "boss", admin=True)
    with client_for(db_url, tmp_path, datasets_dir=datasets) as client:
        queued = client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "tiny", "tokens": 100,
                                                                                "dataset": "missing.jsonl"}},
                             headers=bearer(boss))  # fmt: skip
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu",
                            datasets_dir=datasets)  # fmt: skip
        assert Worker(settings, name="w", poll=0.05, heartbeat_every=0.2, engine=engine).run(max_jobs=1) == 1
        full = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(boss)).json()
        assert full["status"] == "failed" and str(datasets / "missing.jsonl") in full["error"]
        seen = client.get(f"/api/v1/jobs/{job_id}").json()
        assert seen["error"] == full["error"].replace(str(datasets / "missing.jsonl"), "<path>")
        assert str(tmp_path) not in json.dumps(seen)
        assert str(tmp_path) not in client.get(f"/jobs/{job_id}").text
    assert jobs.claim(engine, "nobody") is None  # nothing else was queued
