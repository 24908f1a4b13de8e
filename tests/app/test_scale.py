"""jumpscope as services on one Postgres: several web processes, several workers, concurrent clients.

Real processes on loopback, as docker-compose.yml runs them: `jumpscope serve --workers 2` (real
uvicorn, two processes) and two `jumpscope worker` processes against a fresh schema of the
Postgres of TEST_DATABASE_URL. Jobs are queued and text is encoded through the web server; a
second test hammers it with rating writes and feature reads from four client processes. Every
loop is bounded in count and time. The load test also races one identical first rating from
every client (one creates it, the others edit it: the unique constraint decides, never a 500).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.database import session_scope
from app.core.tables import Rating
from tests.app.conftest import D_SAE, WORDS, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="TEST_DATABASE_URL is not set (Postgres)"),
    pytest.mark.parametrize("shared_index", ["postgres"], indirect=True),
]

JUMPSCOPE = [sys.executable, "-m", "app"]
N_JOBS = 6
N_ENCODES = 20
N_CLIENTS = 4
N_LOOPS = 50
LABELS = ("yes", "maybe", "no")


class Services:
    """Processes started by a test, each logging to a file; whatever still runs is stopped at the end."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[str]:
        with (self.folder / f"{name}.log").open("w") as log:
            proc = subprocess.Popen([*JUMPSCOPE, *args], env={**self.env, **env}, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} (exit {p.poll()}):\n{self.log(name)[-3000:]}" for name, p in self.procs.items())

    def stop(self, name: str, timeout: float = 60) -> int:
        """SIGTERM, as `docker compose stop` sends it; the exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@contextmanager
def services(url: str, folder: Path, log_dir: Path, datasets: Path | None = None) -> Iterator[Services]:
    env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"),
           "JUMPSCOPE_RUNS_DIR": str(log_dir / "runs"), "JUMPSCOPE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("JUMPSCOPE_WORKER_URL", None)
    if datasets is not None:
        env["JUMPSCOPE_DATASETS_DIR"] = str(datasets)
    running = Services(log_dir, env)
    try:
        yield running
    finally:
        running.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, running: Services) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{running.logs()}")


def start_web(running: Services, **env: str) -> str:
    """`jumpscope serve --workers 2` on a free loopback port, once /healthz answers; its base URL."""
    port = free_port()
    proc = running.start("web", "serve", "--port", str(port), "--workers", "2", "--log-level", "warning", **env)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"the web server exited\n{running.logs()}"
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200

    wait_for(ready, 120, "the web server", running)
    return base


def texts_to_encode() -> list[str]:
    """N_ENCODES texts of different lengths (some repeated), deterministic."""
    import random

    rng = random.Random(1)
    distinct = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(N_ENCODES - 4)]
    return distinct + distinct[:4]


def direct_encodings(engine: Any, texts: list[str]) -> dict[str, Any]:
    """The in-process encoding of each text (no server, no batching), from the SAE's row in the store."""
    from app.catalog.saes import get_sae
    from app.encoding.local import LocalEncoder
    from app.encoding.types import SAETarget

    with session_scope(engine) as session:
        row = get_sae(session, "tiny")
        assert row.model is not None and row.layer is not None and row.site is not None
        target = SAETarget(name=row.name, path=row.path, model=row.model.name, layer=row.layer, site=row.site,
                           prepend_bos=row.prepend_bos)  # fmt: skip
    encoder = LocalEncoder(device="cpu", max_loaded=1)
    try:
        return {text: encoder.encode_sync(target, [text])[0] for text in set(texts)}
    finally:
        encoder.close()


def same_encoding(served: dict[str, Any], direct: Any) -> bool:
    if served["tokens"] != direct.tokens or served["token_ids"] != direct.token_ids:
        return False
    if served["special"] != direct.special or len(served["activations"]) != len(direct.activations):
        return False
    for got, want in zip(served["activations"], direct.activations, strict=True):
        got_map = {a["index"]: a["value"] for a in got}
        if set(got_map) != {i for i, _ in want}:
            return False
        if not all(math.isclose(got_map[i], v, rel_tol=1e-4, abs_tol=1e-4) for i, v in want):
            return False
    return True


@pytest.mark.parametrize("encoder", ["in-web", "worker-http"])
def test_two_web_processes_and_two_workers_share_one_postgres(
    shared_index: Any, tmp_path: Path, encoder: str, short_docs: Path
) -> None:
    """Jobs queued through the web server run exactly once each; encodes through it come back right."""
    url, engine, _, folder = shared_index
    texts = texts_to_encode()
    expected = direct_encodings(engine, texts)
    # the SAE's recorded dataset (short_docs) is read by its index jobs: jobs may read it under JUMPSCOPE_DATASETS_DIR
    with services(url, folder, tmp_path, datasets=short_docs.parent) as running:
        web_env: dict[str, str] = {}
        worker_port = free_port()
        if encoder == "worker-http":  # the web server holds no model: it asks w1 over HTTP
            web_env["JUMPSCOPE_WORKER_URL"] = f"http://127.0.0.1:{worker_port}"
        base = start_web(running, **web_env)
        common = ["--log-level", "info", "worker", "--poll", "0.2", "--heartbeat", "0.5"]
        if encoder == "worker-http":
            running.start("w1", *common, "--name", "w1", "--port", str(worker_port))
        else:
            running.start("w1", *common, "--name", "w1", "--no-serve", "--idle-exit", "5")
        running.start("w2", *common, "--name", "w2", "--no-serve", "--idle-exit", "5")

        with httpx.Client(base_url=base, timeout=120) as client:
            if encoder == "worker-http":
                wait_for(lambda: client.get("/healthz").json()["encoder"] == "ok", 120, "the worker's encoder", running)
            ids = []
            for seed in range(N_JOBS):
                params = {"sae": "tiny", "tokens": 200, "top_k": 2, "window": 8, "seed": seed}
                reply = client.post("/api/v1/jobs", json={"kind": "index", "params": params})
                assert reply.status_code == 202, reply.text
                ids.append(reply.json()["id"])

            def encode(text: str) -> tuple[int, Any]:
                reply = client.post("/api/v1/saes/tiny/encode", json={"text": text})
                return reply.status_code, reply.json()

            def read(index: int) -> int:  # feature pages while the jobs swap the index underneath
                return client.get(f"/api/v1/saes/tiny/features/{index}").status_code

            with ThreadPoolExecutor(max_workers=8) as pool:  # encodes and reads interleaved, while the jobs run
                encoding = [pool.submit(encode, text) for text in texts]
                reading = [pool.submit(read, i % D_SAE) for i in range(2 * D_SAE)]
                encodes = [f.result() for f in encoding]
                reads = [f.result() for f in reading]

            def finished() -> bool:
                states = [client.get(f"/api/v1/jobs/{job_id}").json()["status"] for job_id in ids]
                return all(state in ("succeeded", "failed", "cancelled") for state in states)

            wait_for(finished, 600, "the jobs", running)
            jobs = [client.get(f"/api/v1/jobs/{job_id}").json() for job_id in ids]

        wrong = [text for text, (status, body) in zip(texts, encodes, strict=True)
                 if status != 200 or not same_encoding(body, expected[text])]  # fmt: skip
        assert not wrong, (f"{len(wrong)} of {len(texts)} encodes failed or differ", encodes[texts.index(wrong[0])])
        assert reads == [200] * len(reads), reads
        assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * N_JOBS, [j["error"] for j in jobs]
        assert {j["worker"] for j in jobs} <= {"w1", "w2"}

        if encoder == "worker-http":
            assert running.stop("w1") == 0, running.logs()
        for name in ("w1", "w2"):
            assert running.procs[name].wait(timeout=120) == 0, running.logs()
        started = re.findall(r"job (\d+) \(index\) started on (w[12])", running.log("w1") + running.log("w2"))
        assert sorted(int(job_id) for job_id, _ in started) == ids, started  # each job started exactly once
        assert running.stop("web") == 0, running.logs()
        assert "Traceback" not in running.log("web"), running.log("web")


# A client process of the load test: N rating posts and 2N feature reads, counted (argv: base rater n start d_sae).
CLIENT = r"""
import json, sys, time
import httpx

base, rater, n, start, d_sae = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
labels = ("yes", "maybe", "no")
counts = {"created": 0, "edited": 0, "reads": 0, "errors": 0, "race": 0}
samples = []
time.sleep(max(0.0, start - time.time()))
with httpx.Client(base_url=base, timeout=60) as client:
    # every client's first request: the same first rating by the same rater, all at once
    reply = client.post(f"/api/v1/saes/tiny/features/{d_sae - 1}/ratings", json={"rater": "everyone", "label": "yes"})
    counts["race"] = reply.status_code
    if reply.status_code not in (200, 201):
        counts["errors"] += 1
        samples.append(f"race: {reply.status_code} {reply.text[:300]}")
    for i in range(n):
        feature = i % d_sae
        calls = [
            ("POST", f"/api/v1/saes/tiny/features/{feature}/ratings",
             {"rater": rater, "label": labels[i % 3], "note": f"{rater} {i}"}),
            ("GET", f"/api/v1/saes/tiny/features?sort=rating&order=desc&limit=20&offset={i % 3 * 10}", None),
            ("GET", f"/api/v1/saes/tiny/features/{(feature * 7 + 3) % d_sae}", None),
        ]
        for method, path, body in calls:
            try:
                reply = client.request(method, path, json=body)
            except httpx.HTTPError as err:
                counts["errors"] += 1
                samples.append(f"{method} {path}: {err!r}")
                continue
            if method == "POST" and reply.status_code in (200, 201):
                counts["created" if reply.status_code == 201 else "edited"] += 1
            elif method == "GET" and reply.status_code == 200:
                counts["reads"] += 1
            else:
                counts["errors"] += 1
                samples.append(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
print(json.dumps({**counts, "samples": samples[:5]}))
"""


def test_concurrent_rating_writes_and_feature_reads_lose_nothing(shared_index: Any, tmp_path: Path) -> None:
    url, engine, _, folder = shared_index
    with services(url, folder, tmp_path) as running:
        base = start_web(running)
        start = time.time() + 3  # the clients start together, after their imports
        raters = [f"load-{k}" for k in range(N_CLIENTS)]
        argv = [str(N_LOOPS), str(start), str(D_SAE)]
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, base, rater, *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rater in raters
        ]
        outputs = [c.communicate(timeout=600) for c in clients]
        assert all(c.returncode == 0 for c in clients), [err[-2000:] for _, err in outputs]
        counts = [json.loads(out) for out, _ in outputs]
        assert running.stop("web") == 0, running.logs()
        errors = sum(c["errors"] for c in counts)
        assert errors == 0, ([c["samples"] for c in counts], running.logs())
        assert "Traceback" not in running.log("web"), running.log("web")

    assert sorted(c["race"] for c in counts) == [200] * (N_CLIENTS - 1) + [201]  # one created it, the rest edited
    distinct = min(N_LOOPS, D_SAE)
    assert [(c["created"], c["edited"], c["reads"]) for c in counts] == [
        (distinct, N_LOOPS - distinct, 2 * N_LOOPS)
    ] * N_CLIENTS
    expected = {(rater, i % D_SAE): (LABELS[i % 3], f"{rater} {i}") for rater in raters for i in range(N_LOOPS)}
    with session_scope(engine) as session:
        rows = session.scalars(select(Rating).where(Rating.rater.in_(raters))).all()
        stored = {(r.rater, r.feature_index): (r.label, r.note) for r in rows}
        assert len(rows) == len(expected) == N_CLIENTS * distinct
        raced = session.scalars(select(Rating).where(Rating.rater == "everyone")).all()
        assert [(r.feature_index, r.label) for r in raced] == [(D_SAE - 1, "yes")]
    assert stored == expected  # every rating there, each with its last edit
