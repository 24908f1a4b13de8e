"""`jumpscope explain` and the worker's explain jobs, on the tiny SAE in real stores with the tiny chat model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from app.cli import app
from app.core.database import session_scope
from app.core.settings import Settings
from app.core.tables import Explanation, Job
from app.jobs.worker import Worker
from app.server import create_app
from tests.app.conftest import D_SAE, free_port


def _env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data"), "JUMPSCOPE_LLM_MAX_RETRIES": "0",
            **extra}  # fmt: skip


def _explained(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return dict(session.execute(select(Explanation.feature_index, Explanation.status)).all())


def test_explain_command_stores_and_resumes(
    indexed: tuple[Engine, Any], db_url: str, tmp_path: Path, long_chat_dir: Path
) -> None:
    engine, _ = indexed
    runner = CliRunner()
    args = ["explain", "tiny", "--features", "3", "--llm", str(long_chat_dir), "--device", "cpu"]
    result = runner.invoke(app, args, env=_env(db_url, tmp_path))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"explained tiny with hf:{long_chat_dir}" in out and "features/min" in out and "1 features" in out
    assert set(_explained(engine)) == {3} and _explained(engine)[3] in ("ok", "failed")
    result = runner.invoke(app, args, env=_env(db_url, tmp_path))
    assert result.exit_code == 0 and "1 already done, 0 explained, 0 failed attempts" in " ".join(result.output.split())


def test_explain_command_errors_are_one_line_and_store_nothing(
    indexed: tuple[Engine, Any], db_url: str, tmp_path: Path
) -> None:
    engine, _ = indexed
    runner = CliRunner()
    down = f"http://127.0.0.1:{free_port()}/v1"
    for args, message in [
        (["explain", "tiny"], "give either --features 1,2,3 or --sample N"),
        (["explain", "tiny", "--features", "1", "--sample", "2"], "give either"),
        (["explain", "tiny", "--features", "1,x"], "--features takes feature indices separated by commas"),
        (["explain", "tiny", "--features", "-1"], "feature indices are 0 or more"),
        (["explain", "tiny", "--features", f"1,{D_SAE}"], f"there is no feature {D_SAE}"),
        (["explain", "tiny", "--sample", "0"], "--sample must be at least 1"),
        (["explain", "nope", "--sample", "2"], "no SAE named 'nope'"),
        (["explain", "tiny", "--sample", "2", "--baseline", "shuffled"], "--baseline takes 'random'"),
        (["explain", "tiny", "--sample", "2", "--llm", down], "name the model it serves with --llm-model"),
        (["explain", "tiny", "--sample", "2", "--llm", "ftp://x"], "only http:// and https://"),
        (["explain", "tiny", "--features", "1,2,3", "--llm", down, "--llm-model", "m"],
         "gave no answer for 3 features in a row"),
    ]:  # fmt: skip
        result = runner.invoke(app, args, env=_env(db_url, tmp_path))
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert set(_explained(engine).values()) == {"error"}  # only the unanswered attempts, to retry


def test_an_explain_job_runs_in_the_worker_under_the_jobs_rules(
    indexed: tuple[Engine, Any], db_url: str, tmp_path: Path, long_chat_dir: Path
) -> None:
    engine, _ = indexed
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu",
                        datasets_dir=long_chat_dir.parent)  # fmt: skip
    job = {"kind": "explain", "params": {"sae": "tiny", "features": [2], "llm": str(long_chat_dir)}}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        created = client.post("/api/v1/jobs", json=job)
        assert created.status_code == 202, created.text
        for params, status, message in [
            ({"sae": "tiny"}, 422, "give either features or sample"),
            ({"sae": "tiny", "sample": 2, "features": [1]}, 422, "give either"),
            ({"sae": "tiny", "features": [D_SAE]}, 422, f"there is no feature {D_SAE}"),
            ({"sae": "tiny", "sample": 1, "llm": "http://10.0.0.1/v1"}, 422, "JUMPSCOPE_LLM_URL"),
            ({"sae": "tiny", "sample": 1, "llm": "/etc"}, 422, "inside JUMPSCOPE_DATASETS_DIR"),
            ({"sae": "tiny", "sample": 1, "baseline": "shuffled"}, 422, "random"),
            ({"sae": "gone", "sample": 1}, 404, "no SAE named 'gone'"),
        ]:
            answer = client.post("/api/v1/jobs", json={"kind": "explain", "params": params})
            assert answer.status_code == status, (params, answer.text)
            assert message in answer.text, (params, answer.text)
    job_id = created.json()["id"]
    Worker(settings, name="w0", poll=0.05, heartbeat_every=0.1, engine=engine).run(max_jobs=1)
    with session_scope(engine) as session:
        done = session.get(Job, job_id)
        assert done is not None and done.status == "succeeded", done.error if done else None
        assert done.progress == 1.0 and done.result["features"] == 1 and done.result["llm"] == f"hf:{long_chat_dir}"
        assert done.result["ok"] + done.result["failed"] == 1 and set(done.result["means"]) == {
            "simulation", "detection", "fuzzing"}  # fmt: skip
    assert set(_explained(engine)) == {2}
    # the worker checks again with its own settings: without the datasets folder the model folder is refused
    again = {**job["params"], "features": [4]}  # type: ignore[dict-item]
    from app.jobs import queue

    job_id = queue.enqueue(engine, "explain", again)
    bare = Settings(database_url=db_url, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", device="cpu")
    Worker(bare, name="w1", poll=0.05, heartbeat_every=0.1, engine=engine).run(max_jobs=1)
    with session_scope(engine) as session:
        refused = session.get(Job, job_id)
        assert refused is not None and refused.status == "failed" and "JUMPSCOPE_DATASETS_DIR" in (refused.error or "")
    assert set(_explained(engine)) == {2}
