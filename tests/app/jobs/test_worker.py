"""Jobs and workers: claiming is exclusive, jobs run and report, a killed worker's job resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import queue as jobs
from app.jobs.worker import Worker

JUMPSCOPE = [sys.executable, "-m", "app"]


def test_claims_are_exclusive_under_concurrency(store: Engine) -> None:
    ids = [jobs.enqueue(store, "index", {"sae": "x", "tokens": 1}) for _ in range(30)]
    claimed: list[int] = []
    lock = threading.Lock()

    def grab(name: str) -> None:
        while (job := jobs.claim(store, name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids  # every job exactly once
    with session_scope(store) as session:
        assert {j.status for j in session.scalars(select(Job))} == {"running"}
        assert {j.attempts for j in session.scalars(select(Job))} == {1}


def test_stale_jobs_are_requeued_and_heartbeats_of_lost_jobs_fail(store: Engine) -> None:
    job_id = jobs.enqueue(store, "index", {"sae": "x"})
    assert jobs.claim(store, "a") is not None
    assert jobs.heartbeat(store, job_id, "a", progress=0.5)
    time.sleep(0.05)
    assert jobs.requeue_stale(store, stale_after=0.01) == [job_id]
    assert not jobs.heartbeat(store, job_id, "a")  # no longer a's
    job = jobs.claim(store, "b")
    assert job is not None and job.id == job_id and job.attempts == 2


def test_a_worker_runs_an_index_job_and_reports(
    registered: tuple[Engine, Any], db_url: str, tmp_path: Path, short_docs: Path
) -> None:
    engine, _ = registered  # 'tiny' records short_docs, a local file, as its training dataset
    params = {"sae": "tiny", "tokens": 600, "top_k": 3, "window": 8, "seed": 0}
    outside = jobs.enqueue(engine, "index", params)
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu")
    Worker(settings, name="w0", poll=0.05, heartbeat_every=0.1, engine=engine).run(max_jobs=1)
    good = jobs.enqueue(engine, "index", params)
    bad = jobs.enqueue(engine, "index", {"sae": "gone", "tokens": 10, "top_k": 3, "window": 8, "seed": 0})
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu",
                        datasets_dir=short_docs.parent)  # fmt: skip
    worker = Worker(settings, name="w1", poll=0.05, heartbeat_every=0.1, engine=engine)
    assert worker.run(max_jobs=2) == 2
    with session_scope(engine) as session:
        refused, done, failed = session.get(Job, outside), session.get(Job, good), session.get(Job, bad)
        assert refused is not None and done is not None and failed is not None
        # the SAE's own dataset follows the jobs' rule: outside JUMPSCOPE_DATASETS_DIR it is not read
        assert refused.status == "failed" and "this SAE's own dataset" in (refused.error or "")
        assert "JUMPSCOPE_DATASETS_DIR" in (refused.error or "")
        assert done.status == "succeeded" and done.progress == 1.0 and done.result["tokens"] >= 600
        assert done.worker == "w1" and done.finished_at is not None
        assert failed.status == "failed" and "no SAE named 'gone'" in (failed.error or "")


def _worker(db_url: str, tmp_path: Path, name: str, *extra: str, datasets: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data"),
           "JUMPSCOPE_RUNS_DIR": str(tmp_path / "runs"), "JUMPSCOPE_DEVICE": "cpu"}  # fmt: skip
    if datasets is not None:  # the folder jobs may read local models and data from
        env["JUMPSCOPE_DATASETS_DIR"] = str(datasets)
    args = ["worker", "--no-serve", "--name", name, "--poll", "0.2", "--heartbeat", "0.5", *extra]
    return subprocess.Popen([*JUMPSCOPE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_worker_processes_run_every_job_exactly_once(
    registered: tuple[Engine, Any], db_url: str, tmp_path: Path, short_docs: Path
) -> None:
    engine, _ = registered
    ids = [jobs.enqueue(engine, "index", {"sae": "tiny", "tokens": 200, "top_k": 2, "window": 8, "seed": i})
           for i in range(6)]  # fmt: skip
    procs = [_worker(db_url, tmp_path, f"p{i}", "--idle-exit", "3", datasets=short_docs.parent) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    with session_scope(engine) as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        assert [(j.status, j.attempts) for j in rows] == [("succeeded", 1)] * 6, [j.error for j in rows]
        assert {j.worker for j in rows} <= {"p0", "p1"}


@pytest.mark.slow
def test_a_killed_workers_training_job_resumes_from_its_checkpoint(
    store: Engine, db_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    params = {"name": "resumed", "model": str(tiny_model_dir), "layer": 1, "width": 64, "tokens": 256 * 120,
              "batch_size": 256, "context_size": 48, "checkpoint_every": 10}  # fmt: skip
    job_id = jobs.enqueue(store, "train", params)
    first = _worker(db_url, tmp_path, "doomed", datasets=tiny_model_dir.parent)
    checkpoint = tmp_path / "runs" / f"job-{job_id}" / "checkpoint.pt"
    _wait(checkpoint.exists, 300, "the first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    with session_scope(store) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running" and job.worker == "doomed"
    second = _worker(db_url, tmp_path, "heir", "--stale-after", "2", "--max-jobs", "1", datasets=tiny_model_dir.parent)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    with session_scope(store) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.worker, job.attempts) == ("succeeded", "heir", 2), job.error
        assert job.result["resumed"] is True and job.result["sae"] == "resumed"
        assert job.metrics and job.metrics[-1]["step"] == 120
