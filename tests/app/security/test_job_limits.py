"""Finding 4 of the attack, sizes and names: a queued job's size is checked before it is queued, and one
train job name is taken once.

Through `POST /api/v1/jobs` (TestClient on `create_app`, SQLite and Postgres, and a real `jumpscope serve`
for the race): tokens over JUMPSCOPE_JOB_MAX_TOKENS and memory estimates over JUMPSCOPE_JOB_MAX_MEMORY_BYTES
are 422 (the runner checks the full estimate again once d_in is known, before building the SAE); a train
job's name is 409 while a queued or running job holds it, also when many requests race for it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import queue as jobs
from app.jobs.worker import Worker
from app.server import create_app
from tests.app.conftest import jumpscope_serve

MiB = 1 << 20


def client_for(url: str, folder: Path, **settings: Any) -> TestClient:
    base: dict[str, Any] = dict(database_url=url, data_dir=folder / "data", runs_dir=folder / "runs", device="cpu")
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


def queue(client: TestClient, kind: str, **params: Any) -> httpx.Response:
    return client.post("/api/v1/jobs", json={"kind": kind, "params": params})


def test_tokens_over_the_limit_are_refused(shared_index: Any) -> None:
    url, _, _, folder = shared_index
    with client_for(url, folder, job_max_tokens=50_000) as client:
        for kind, params, field in [("train", {"name": "many", "tokens": 50_001}, "tokens"),
                                    ("train", {"name": "many", "tokens": 8192, "index_tokens": 60_000},
                                     "index_tokens"),
                                    ("index", {"sae": "tiny", "tokens": 50_001}, "tokens")]:  # fmt: skip
            reply = queue(client, kind, **params)
            assert reply.status_code == 422, reply.text
            detail = reply.json()["detail"]
            assert (
                detail.startswith(f"params.{field}: ") and "50,000" in detail and "JUMPSCOPE_JOB_MAX_TOKENS" in detail
            )
        assert queue(client, "train", name="enough", tokens=50_000).status_code == 202
        assert queue(client, "index", sae="tiny", tokens=50_000).status_code == 202


def test_memory_estimates_over_the_limit_are_refused(shared_index: Any) -> None:
    url, _, _, folder = shared_index
    with client_for(url, folder) as client:  # the limit is the machine's memory: 1M latents x 1M tokens is not
        reply = queue(client, "train", name="huge", width=1 << 20, batch_size=1 << 20)
        assert reply.status_code == 422
        detail = reply.json()["detail"]
        assert "TiB of memory by its estimate" in detail and "JUMPSCOPE_JOB_MAX_MEMORY_BYTES" in detail
        assert "width or batch_size" in detail
    with client_for(url, folder, job_max_memory_bytes=64 * MiB) as client:
        # batch_size x width x 24 bytes: 4096 x 4096 is 384 MiB, 256 x 4096 is 24 MiB
        assert queue(client, "train", name="big", width=4096, batch_size=4096).status_code == 422
        assert queue(client, "train", name="small", width=4096, batch_size=256).status_code == 202
        # 65,536 latents train in 24 MiB at batch 16, but indexing them afterwards keeps examples for each
        then_index = queue(client, "train", name="wide", width=1 << 16, batch_size=16, index_tokens=10_000)
        assert then_index.status_code == 422 and "indexing the trained SAE needs" in then_index.json()["detail"]
        assert queue(client, "train", name="wide", width=1 << 16, batch_size=16).status_code == 202
        # indexing the 40-latent SAE: its examples, top_k x window per feature
        wide = queue(client, "index", sae="tiny", top_k=1000, window=4096)
        assert wide.status_code == 422 and "indexing this SAE needs about" in wide.json()["detail"]
        assert queue(client, "index", sae="tiny", top_k=20, window=64).status_code == 202


def test_the_runner_checks_the_full_estimate_before_building_the_sae(
    store: Engine, db_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # 4096 latents, batch 16: 1.5 MiB without d_in (queued), but 64-wide weights, Adam and the shuffle buffer
    # need about 72 MiB.
    limit = 8 * MiB
    models = tiny_model_dir.parent  # a local model folder is read from under JUMPSCOPE_DATASETS_DIR
    with client_for(db_url, tmp_path, job_max_memory_bytes=limit, datasets_dir=models) as client:
        reply = queue(client, "train", name="sneaky", model=str(tiny_model_dir), layer=1, width=4096, batch_size=16,
                      tokens=4096, context_size=16)  # fmt: skip
        assert reply.status_code == 202, reply.text
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu",
                        job_max_memory_bytes=limit, datasets_dir=models)  # fmt: skip
    assert Worker(settings, name="w", poll=0.05, heartbeat_every=0.2, engine=store).run(max_jobs=1) == 1
    with session_scope(store) as session:
        job = session.get(Job, reply.json()["id"])
        assert job is not None and job.status == "failed"
        assert "training on 64-wide activations needs about" in (job.error or "")
        assert "JUMPSCOPE_JOB_MAX_MEMORY_BYTES" in (job.error or "")
    assert not (tmp_path / "runs" / f"job-{reply.json()['id']}" / "metrics.jsonl").exists()  # never trained


def test_a_train_name_is_taken_while_its_job_is_queued_or_running(store: Engine, db_url: str, tmp_path: Path) -> None:
    with client_for(db_url, tmp_path) as client:
        first = queue(client, "train", name="dup")
        assert first.status_code == 202
        job_id = first.json()["id"]
        again = queue(client, "train", name="dup", width=64)
        assert again.status_code == 409
        assert again.json() == {"detail": f"train job {job_id} (queued) already trains an SAE named 'dup': "
                                          "choose another name"}  # fmt: skip
        assert queue(client, "train", name="dup-2").status_code == 202  # another name is fine
        assert jobs.claim(store, "w") is not None  # the oldest, "dup", now runs
        running = queue(client, "train", name="dup")
        assert running.status_code == 409 and "(running)" in running.json()["detail"]
        with session_scope(store) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
        assert queue(client, "train", name="dup").status_code == 202  # a failed job frees its name


@pytest.mark.parametrize("attempts", [12])
def test_racing_requests_for_one_name_queue_one_job(store: Engine, db_url: str, tmp_path: Path, attempts: int) -> None:
    codes: list[int] = []
    start = threading.Barrier(attempts)
    with jumpscope_serve(db_url, tmp_path) as served:

        def post() -> None:
            with httpx.Client(base_url=served.base, timeout=60) as client:
                start.wait()
                reply = client.post("/api/v1/jobs", json={"kind": "train", "params": {"name": "raced"}})
                codes.append(reply.status_code)

        threads = [threading.Thread(target=post) for _ in range(attempts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(codes) == [202] + [409] * (attempts - 1), codes
    with session_scope(store) as session:
        from sqlalchemy import func, select

        assert session.scalar(select(func.count()).select_from(Job).where(Job.kind == "train")) == 1
