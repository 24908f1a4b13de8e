"""Finding 4 of the attack, datasets: a queued job reads local data only inside JUMPSCOPE_DATASETS_DIR.

Through `POST /api/v1/jobs` (TestClient on `create_app`, SQLite and Postgres): `..`, `/`, absolute paths
outside the folder and symlinks leading out of it are 422 at queue time, with a message naming the rule
and the setting but no host path; files inside the folder, relative paths, `packaged` and Hub names are
queued. And in the worker (its own settings): a job that got into the queue anyway fails before reading,
so the file of the attack never reaches `/api/v1/saes/NAME/features?q=`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import queue as jobs
from app.jobs.worker import Worker
from app.server import create_app

SECRET = "zyxwvutsrq-credential-7f3a"


def client_for(url: str, folder: Path, datasets: Path | None, **settings: Any) -> TestClient:
    base: dict[str, Any] = dict(database_url=url, data_dir=folder / "data", runs_dir=folder / "runs", device="cpu",
                                datasets_dir=datasets)  # fmt: skip
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


def make_layout(root: Path) -> dict[str, Path]:
    """datasets/ (the allowed folder, with a corpus, a sub folder and a symlink leading out) and secret/ beside it."""
    datasets, secret = root / "datasets", root / "secret"
    (datasets / "sub").mkdir(parents=True)
    secret.mkdir()
    line = json.dumps({"text": "the quick brown fox jumps over the lazy dog"})
    (datasets / "docs.jsonl").write_text((line + "\n") * 50)
    (datasets / "sub" / "more.jsonl").write_text((line + "\n") * 50)
    creds = secret / "creds.json"
    creds.write_text((json.dumps({"text": f"password {SECRET} token"}) + "\n") * 50)
    (datasets / "escape").symlink_to(secret, target_is_directory=True)
    (datasets / "creds-link.json").symlink_to(creds)
    return {"datasets": datasets, "secret": secret, "creds": creds}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_layout(tmp_path_factory.mktemp("layout"))


@pytest.fixture(scope="module")
def client(shared_index: Any, layout: dict[str, Path]) -> Any:
    url, _, _, folder = shared_index
    with client_for(url, folder, layout["datasets"]) as c:
        yield c


def refused_paths(layout: dict[str, Path]) -> list[str]:
    depth = "../" * (len(layout["datasets"].parts) + 2)
    return [
        "../../../../srv/secret/creds.json",  # the attack
        f"{depth}{str(layout['creds']).lstrip('/')}",
        "/",
        "/etc/passwd",
        str(layout["creds"]),  # absolute, outside the folder
        str(layout["secret"]),
        str(layout["datasets"]) + "/../secret/creds.json",
        "sub/../../secret/creds.json",
        "escape/creds.json",  # a symlink inside the folder that leads out of it
        "creds-link.json",
        str(layout["datasets"] / "escape" / "creds.json"),
        "~/creds.json",
        "..",
    ]


def assert_no_host_path(detail: str, layout: dict[str, Path]) -> None:
    for path in layout.values():
        assert str(path) not in detail, detail
    assert "/tmp" not in detail, detail


def test_paths_outside_the_folder_are_refused_at_queue_time(client: TestClient, layout: dict[str, Path]) -> None:
    for dataset in refused_paths(layout):
        for job in ({"kind": "index", "params": {"sae": "tiny", "tokens": 100, "dataset": dataset}},
                    {"kind": "train", "params": {"name": "refused", "dataset": dataset}},
                    {"kind": "train", "params": {"name": "refused", "activations": dataset}},
                    {"kind": "train", "params": {"name": "refused", "model": dataset}}):  # fmt: skip
            reply = client.post("/api/v1/jobs", json=job)
            assert reply.status_code == 422, (job, reply.text)
            detail = reply.json()["detail"]
            assert "JUMPSCOPE_DATASETS_DIR" in detail and detail.startswith("params."), detail
            assert_no_host_path(detail, layout)


def test_data_inside_the_folder_and_hub_names_are_queued(client: TestClient, layout: dict[str, Path]) -> None:
    datasets = layout["datasets"]
    for i, dataset in enumerate([str(datasets / "docs.jsonl"), "docs.jsonl", "sub/more.jsonl", "sub",
                                 str(datasets), "./docs.jsonl", "packaged", "wikitext",
                                 "HuggingFaceFW/fineweb-edu"]):  # fmt: skip
        index = client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "tiny", "dataset": dataset}})
        assert index.status_code == 202, (dataset, index.text)
        train = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": f"ok-{i}", "dataset": dataset}})
        assert train.status_code == 202, (dataset, train.text)
    cache = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": "cached", "activations": "sub"}})
    assert cache.status_code == 202, cache.text
    for i, model in enumerate(["gemma3-270m", "google/gemma-2-2b", "sub", str(datasets / "sub")]):  # names, folders
        job = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": f"model-{i}", "model": model}})
        assert job.status_code == 202, (model, job.text)


def test_without_the_setting_only_hub_names_are_queued(shared_index: Any, layout: dict[str, Path]) -> None:
    url, _, _, folder = shared_index
    with client_for(url, folder, None) as client:
        for dataset in ["docs.jsonl", str(layout["datasets"] / "docs.jsonl"), "/", "./x"]:
            reply = client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "tiny", "dataset": dataset}})
            assert reply.status_code == 422 and "JUMPSCOPE_DATASETS_DIR is not set" in reply.json()["detail"]
            assert_no_host_path(reply.json()["detail"], layout)
        for dataset in ["owner/name", "packaged"]:
            reply = client.post("/api/v1/jobs", json={"kind": "index", "params": {"sae": "tiny", "dataset": dataset}})
            assert reply.status_code == 202, reply.text


# --- the worker checks again --------------------------------------------------------------------------------------


def run_jobs(engine: Engine, db_url: str, folder: Path, datasets: Path | None, n: int) -> None:
    settings = Settings(database_url=db_url, data_dir=folder / "data", runs_dir=folder / "runs", device="cpu",
                        datasets_dir=datasets)  # fmt: skip
    assert Worker(settings, name="w", poll=0.05, heartbeat_every=0.2, engine=engine).run(max_jobs=n) == n


def job_state(engine: Engine, job_id: int) -> tuple[str, str]:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.error or ""


def test_the_worker_refuses_what_the_queue_should_not_have_taken(
    registered: tuple[Engine, Any], db_url: str, tmp_path: Path
) -> None:
    engine, _ = registered
    layout = make_layout(tmp_path / "host")
    datasets = layout["datasets"]
    # Queued straight into the table (an older server, or one whose JUMPSCOPE_DATASETS_DIR differs).
    index_params = {"sae": "tiny", "tokens": 300, "top_k": 3, "window": 8, "seed": 0}
    bad = [jobs.enqueue(engine, "index", {**index_params, "dataset": d})
           for d in (str(layout["creds"]), "escape/creds.json", "../secret/creds.json", "/")]  # fmt: skip
    train = jobs.enqueue(engine, "train", {"name": "from-cache", "activations": str(layout["secret"])})
    good = jobs.enqueue(engine, "index", {**index_params, "dataset": "docs.jsonl"})
    run_jobs(engine, db_url, tmp_path, datasets, len(bad) + 2)
    for job_id in [*bad, train]:
        status, error = job_state(engine, job_id)
        assert status == "failed" and error.startswith("JobRejected: params.") and "JUMPSCOPE_DATASETS_DIR" in error
    assert job_state(engine, good) == ("succeeded", "")
    with session_scope(engine) as session:
        job = session.get(Job, good)
        assert job is not None and job.result["tokens"] >= 300
    # The secret was never indexed, so the feature search cannot publish it.
    with client_for(db_url, tmp_path, datasets) as client:
        found = client.get("/api/v1/saes/tiny/features", params={"q": SECRET}).json()
        assert found["total"] == 0
        assert client.get("/api/v1/saes/tiny/features", params={"q": "fox"}).json()["total"] > 0


def test_the_worker_refuses_local_data_without_the_setting_and_hub_names_that_are_local_files(
    registered: tuple[Engine, Any], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = registered
    layout = make_layout(tmp_path / "host")
    index_params = {"sae": "tiny", "tokens": 300, "top_k": 3, "window": 8, "seed": 0}
    monkeypatch.chdir(layout["secret"].parent)  # the worker's working folder holds secret/creds.json
    unset = jobs.enqueue(engine, "index", {**index_params, "dataset": "datasets/docs.jsonl"})
    run_jobs(engine, db_url, tmp_path, None, 1)
    status, error = job_state(engine, unset)
    assert status == "failed" and "JUMPSCOPE_DATASETS_DIR is not set" in error
    os.rename(layout["creds"], layout["secret"] / "creds")  # "secret/creds" has the form of a Hub name
    lookalike = jobs.enqueue(engine, "index", {**index_params, "dataset": "secret/creds"})
    run_jobs(engine, db_url, tmp_path, layout["datasets"], 1)
    status, error = job_state(engine, lookalike)
    assert status == "failed" and "has the form of a Hub name, but the worker's working folder holds" in error
