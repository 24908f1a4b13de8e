"""Steering and ablation through a real `jumpscope worker` process (its token required) behind a real
`jumpscope serve`, against the in-process results; and the worker's own endpoints and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.encoding import worker_api
from app.server import create_app
from tests.app.conftest import D_SAE, free_port, jumpscope_serve, wait_ready
from tests.app.steering.conftest import PROMPT, STEER, ablate_url

TOKEN = "steering-worker-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

STEER_BODY = {"prompt": PROMPT, "interventions": [{"feature": 3, "strength": 20.0}, {"feature": 7, "clamp": 0.0}],
              "max_new_tokens": 10, "temperature": 0.8, "seed": 5}  # fmt: skip
ABLATE_BODY = {"text": PROMPT, "top_tokens": 4}


@pytest.fixture(scope="module")
def worker(shared_index: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `jumpscope worker` process over the shared store, with JUMPSCOPE_WORKER_TOKEN: its URL."""
    url, _, _, folder = shared_index
    port, logs = free_port(), tmp_path_factory.mktemp("steer-worker")
    env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"), "JUMPSCOPE_DEVICE": "cpu",
           "JUMPSCOPE_RUNS_DIR": str(logs / "runs"), "JUMPSCOPE_WORKER_TOKEN": TOKEN,
           "JUMPSCOPE_ENCODE_MAX_TOKENS": "64"}  # fmt: skip
    with (logs / "worker.log").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--port", str(port), "--poll", "0.5"],
                                env=env, text=True, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def in_process(shared_index: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The replies of the in-process encoder to STEER_BODY and to ABLATE_BODY for feature 3."""
    url, _, _, folder = shared_index
    settings = Settings(database_url=url, data_dir=folder / "data", runs_dir=tmp_path_factory.mktemp("runs"),
                        device="cpu", encode_max_tokens=64)  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        steer, ablate = client.post(STEER, json=STEER_BODY), client.post(ablate_url(3), json=ABLATE_BODY)
    assert steer.status_code == ablate.status_code == 200, (steer.text, ablate.text)
    return {"steer": steer.json(), "ablate": ablate.json()}


def close(a: Any, b: Any) -> bool:
    """Equal JSON, floats within 1e-4 (two processes may round the last bits differently)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 * max(1.0, abs(a))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_the_web_server_steers_and_ablates_through_the_worker(
    shared_index: Any, worker: str, in_process: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _, folder = shared_index
    monkeypatch.setenv("JUMPSCOPE_WORKER_URL", worker)
    monkeypatch.setenv("JUMPSCOPE_WORKER_TOKEN", TOKEN)
    with jumpscope_serve(url, folder) as served:
        steer = httpx.post(f"{served.base}{STEER}", json=STEER_BODY, timeout=120)
        ablate = httpx.post(f"{served.base}{ablate_url(3)}", json=ABLATE_BODY, timeout=120)
        assert steer.status_code == 200 and ablate.status_code == 200, (steer.text, ablate.text)
        assert steer.json()["steered"]["token_ids"] == in_process["steer"]["steered"]["token_ids"]
        assert close(steer.json(), in_process["steer"])
        assert close(ablate.json(), in_process["ablate"])
        # bad input is still a 422 with the worker's message, an unknown feature or SAE a 404
        bad = httpx.post(f"{served.base}{STEER}", json={"prompt": "word " * 100}, timeout=60)
        assert bad.status_code == 422 and "over the limit of 64 tokens" in bad.json()["detail"]
        beyond = httpx.post(f"{served.base}{ablate_url(D_SAE)}", json=ABLATE_BODY, timeout=60)
        assert beyond.status_code == 404 and f"no feature {D_SAE}" in beyond.json()["detail"]
        unknown = httpx.post(f"{served.base}/api/v1/saes/nope/steer", json={"prompt": "hi"}, timeout=60)
        assert unknown.status_code == 404
    assert TOKEN not in served.output
    monkeypatch.setenv("JUMPSCOPE_WORKER_TOKEN", "not-the-token-9876543210")
    with jumpscope_serve(url, folder) as served:  # the worker refuses another token: 503 saying why
        refused = httpx.post(f"{served.base}{STEER}", json={"prompt": "hi", "max_new_tokens": 1}, timeout=60)
    assert refused.status_code == 503 and "JUMPSCOPE_WORKER_TOKEN" in refused.json()["detail"]


def test_the_worker_endpoints_need_the_token_and_a_registered_name(worker: str, shared_index: Any) -> None:
    folder = shared_index[3]
    steer = {"sae": "tiny", "prompt": "hi", "max_new_tokens": 2}
    ablate = {"sae": "tiny", "feature": 3, "text": "hi"}
    for path, body in (("/v1/steer", steer), ("/v1/ablate", ablate)):
        assert httpx.post(f"{worker}{path}", json=body, timeout=60).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-9876543210"}
        assert httpx.post(f"{worker}{path}", json=body, headers=wrong, timeout=60).status_code == 403
        good = httpx.post(f"{worker}{path}", json=body, headers=AUTH, timeout=120)
        assert good.status_code == 200, good.text
        for name in ("nope", str(folder / "data" / "saes" / "tiny"), "../../etc/passwd"):
            missing = httpx.post(f"{worker}{path}", json={**body, "sae": name}, headers=AUTH, timeout=60)
            assert missing.status_code == 404 and missing.json() == {"detail": worker_api.UNKNOWN_SAE}
    # the worker checks what the web server checks, for callers that are not the web server
    beyond = httpx.post(f"{worker}/v1/ablate", json={**ablate, "feature": D_SAE}, headers=AUTH, timeout=60)
    assert beyond.status_code == 422 and f"has {D_SAE} features" in beyond.json()["detail"]
    steer_bad = {**steer, "interventions": [{"feature": D_SAE, "strength": 1.0}]}
    reply = httpx.post(f"{worker}/v1/steer", json=steer_bad, headers=AUTH, timeout=60)
    assert reply.status_code == 422 and "out of range" in reply.json()["detail"]
    for extra in ({"path": "/etc"}, {"model": "gpt2"}, {"layer": 0}):
        reply = httpx.post(f"{worker}/v1/steer", json={**steer, **extra}, headers=AUTH, timeout=60)
        assert reply.status_code == 422, extra


def test_an_sae_outside_the_worker_data_folder_is_not_loaded(shared_index: Any, tmp_path: Path) -> None:
    from app.encoding.local import LocalEncoder
    from app.steering.worker_api import add_worker_routes

    engine, folder = shared_index[1], shared_index[3]
    encoder = LocalEncoder(device="cpu")
    try:
        targets = worker_api.StoreTargets(engine)
        app = worker_api.create_worker_app(encoder, targets, data_dir=tmp_path / "elsewhere")
        add_worker_routes(app, encoder, targets, data_dir=tmp_path / "elsewhere")
        with TestClient(app, raise_server_exceptions=False) as client:
            reply = client.post("/v1/steer", json={"sae": "tiny", "prompt": "hi"})
        assert reply.status_code == 503 and "outside this worker's data folder" in reply.json()["detail"]
        assert str(folder) not in reply.text and encoder.sae_loads == 0
    finally:
        encoder.close()
