"""Finding 3 of the attack: the worker's encode API must not trust its caller.

Through the worker's HTTP surface (TestClient on `create_worker_app` over a real store, SQLite and
Postgres, and a real `jumpscope worker` process): the shared secret JUMPSCOPE_WORKER_TOKEN (401 / 403,
compared in constant time, /healthz open) and RemoteEncoder sending it; the request names an SAE by
name only, so a path answers exactly as an unknown name does; weights outside the worker's data
folder are refused; a hostile cfg.json is refused before any allocation; the request is bounded as
the public API is; and no reply names a host path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.encoding import worker_api
from app.encoding.local import LocalEncoder
from app.encoding.remote import RemoteEncoder
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget
from app.encoding.worker_api import StoreTargets, create_worker_app
from tests.app.conftest import D_SAE, free_port, jumpscope_serve, wait_ready
from trainer.formats.files import SAEFormatError

TOKEN = "s3cret-worker-token-0123456789"
WRONG = "not-the-token-9876543210"
TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def encoder() -> Iterator[LocalEncoder]:
    enc = LocalEncoder(device="cpu", window_ms=1.0)
    yield enc
    enc.close()


def worker_client(engine: Engine, data_dir: Path, encoder: LocalEncoder, token: str | None = TOKEN) -> TestClient:
    app = create_worker_app(encoder, StoreTargets(engine), data_dir=data_dir, token=token)
    return TestClient(app, raise_server_exceptions=False)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(client: TestClient, body: dict[str, Any], token: str | None = TOKEN) -> httpx.Response:
    return client.post("/v1/encode", json=body, headers=auth(token) if token else {})


def assert_no_host_path(detail: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in detail, detail
    assert "/tmp" not in detail and os.path.expanduser("~") not in detail, detail


# --- the token --------------------------------------------------------------------------------------------------------


def test_every_endpoint_but_healthz_needs_the_token(
    shared_index: Any, encoder: LocalEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, engine, _, folder = shared_index
    compared: list[tuple[bytes, bytes]] = []
    real_compare = worker_api.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(worker_api.hmac, "compare_digest", spy)
    with worker_client(engine, folder / "data", encoder) as client:
        assert client.get("/healthz").json() == {"status": "ok"}  # open: it tells only that the worker is up
        body = {"sae": "tiny", "texts": [TEXT]}
        missing = post(client, body, token=None)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "JUMPSCOPE_WORKER_TOKEN" in missing.json()["detail"]
        for header in ({"Authorization": "Basic " + TOKEN}, {"Authorization": "Bearer "}, {"Authorization": TOKEN}):
            assert client.post("/v1/encode", json=body, headers=header).status_code == 401, header
        wrong = post(client, body, token=WRONG)
        assert wrong.status_code == 403 and TOKEN not in wrong.text and WRONG not in wrong.text
        assert post(client, body, token=TOKEN[:-1]).status_code == 403  # a prefix is not the token
        for path in ("/docs", "/openapi.json", "/v1/nothing-here"):  # no route probing without the token
            assert client.get(path).status_code == 401, path
        compared.clear()
        good = post(client, body)
        assert good.status_code == 200, good.text
        [result] = good.json()["results"]
        assert result["tokens"][0] == "<bos>" and len(result["activations"]) == len(result["token_ids"])
        assert compared == [(TOKEN.encode(), TOKEN.encode())]  # hmac.compare_digest: constant time


def test_an_empty_token_is_refused(shared_index: Any, encoder: LocalEncoder) -> None:
    _, engine, _, folder = shared_index
    with pytest.raises(ValueError, match="empty"):
        create_worker_app(encoder, StoreTargets(engine), data_dir=folder / "data", token="  ")


def test_remote_encoder_sends_the_token_and_reports_a_refusal_without_secrets(
    shared_index: Any, encoder: LocalEncoder
) -> None:
    _, engine, _, folder = shared_index
    app = create_worker_app(encoder, StoreTargets(engine), data_dir=folder / "data", token=TOKEN)
    target = StoreTargets(engine)("tiny")
    assert target is not None

    def remote(token: str | None) -> RemoteEncoder:
        return RemoteEncoder("http://worker", token=token, transport=httpx.ASGITransport(app=app))

    async def encode(enc: RemoteEncoder, what: SAETarget = target, **options: Any) -> Any:
        try:
            return await enc.encode(what, [TEXT], **options)
        finally:
            await enc.aclose()

    got = asyncio.run(encode(remote(TOKEN), top_k=3, features=[0, 5]))
    assert got == encoder.encode_sync(target, [TEXT], top_k=3, features=[0, 5])
    for token, why in ((None, "sends no token"), (WRONG, "is not the worker's")):
        with pytest.raises(EncoderUnavailable, match=why) as refused:
            asyncio.run(encode(remote(token)))
        message = str(refused.value)
        assert "JUMPSCOPE_WORKER_TOKEN" in message and TOKEN not in message and WRONG not in message
    with pytest.raises(EncodeError, match="top_k"):  # the worker's 422 is still bad input
        asyncio.run(encode(remote(TOKEN), top_k=0))
    gone = SAETarget(name="gone", path=target.path, model=target.model, layer=1, site="resid")
    with pytest.raises(EncoderUnavailable, match="has no SAE named 'gone'.*same database"):
        asyncio.run(encode(remote(TOKEN), gone))


@pytest.fixture(scope="module")
def real_worker(shared_index: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A `jumpscope worker` process with JUMPSCOPE_WORKER_TOKEN over the shared store: its URL and its log file."""
    url, _, _, folder = shared_index
    port, logs = free_port(), tmp_path_factory.mktemp("worker")
    env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"), "JUMPSCOPE_DEVICE": "cpu",
           "JUMPSCOPE_RUNS_DIR": str(logs / "runs"), "JUMPSCOPE_WORKER_TOKEN": TOKEN}  # fmt: skip
    log = logs / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--port", str(port), "--poll", "0.5"],
                                env=env, text=True, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_real_worker_process_needs_its_token(real_worker: tuple[str, Path]) -> None:
    base, log = real_worker
    banner = log.read_text()
    assert "encode API on" in banner and "needs JUMPSCOPE_WORKER_TOKEN" in banner and TOKEN not in banner
    body = {"sae": "tiny", "texts": [TEXT], "top_k": 2}
    assert httpx.post(f"{base}/v1/encode", json=body, timeout=60).status_code == 401
    assert httpx.post(f"{base}/v1/encode", json=body, headers=auth(WRONG), timeout=60).status_code == 403
    good = httpx.post(f"{base}/v1/encode", json=body, headers=auth(), timeout=120)
    assert good.status_code == 200, good.text
    assert all(len(a) <= 2 for a in good.json()["results"][0]["activations"])
    target = SAETarget(name="tiny", path="ignored: the worker reads its own store", model="x", layer=0, site="mlp")
    [enc] = asyncio.run(RemoteEncoder(base, token=TOKEN).encode(target, [TEXT], top_k=2))
    assert enc.token_ids == good.json()["results"][0]["token_ids"]


def test_the_web_server_sends_the_worker_token(
    shared_index: Any, real_worker: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _, folder = shared_index
    base, _ = real_worker
    monkeypatch.setenv("JUMPSCOPE_WORKER_URL", base)
    for token, status in ((TOKEN, 200), (WRONG, 503)):
        monkeypatch.setenv("JUMPSCOPE_WORKER_TOKEN", token)
        with jumpscope_serve(url, folder) as served:
            reply = httpx.post(f"{served.base}/api/v1/saes/tiny/encode", json={"text": TEXT, "top_k": 2}, timeout=120)
        assert reply.status_code == status, reply.text
        if status == 503:
            detail = reply.json()["detail"]
            assert "JUMPSCOPE_WORKER_TOKEN" in detail and TOKEN not in detail and WRONG not in detail
        assert TOKEN not in served.output and WRONG not in served.output


# --- names, not paths ---------------------------------------------------------------------------------------------


def test_a_path_answers_exactly_as_an_unknown_name(shared_index: Any, encoder: LocalEncoder, tmp_path: Path) -> None:
    _, engine, _, folder = shared_index
    sae_folder = folder / "data" / "saes" / "tiny"
    assert (sae_folder / "cfg.json").exists()
    asked = ["nope", str(sae_folder), str(sae_folder / "cfg.json"), "/etc/passwd", str(tmp_path / "missing"),
             "../../../../etc/passwd", "~/.ssh/id_rsa", "tiny/../tiny"]  # fmt: skip
    with worker_client(engine, folder / "data", encoder) as client:
        replies = [post(client, {"sae": name, "texts": [TEXT]}) for name in asked]
        assert len({(r.status_code, r.text) for r in replies}) == 1  # byte for byte the same answer
        assert replies[0].status_code == 404 and replies[0].json() == {"detail": worker_api.UNKNOWN_SAE}
        # The old request form (a folder and a model by path) is refused whether or not the paths exist.
        legacy = [{"name": "tiny", "path": str(sae_folder), "model": "tiny-gemma2", "layer": 1, "site": "resid"},
                  {"name": "tiny", "path": str(tmp_path / "nowhere"), "model": "tiny-gemma2", "layer": 1,
                   "site": "resid"}]  # fmt: skip
        answers = {(r.status_code, r.text) for r in (post(client, {**b, "texts": [TEXT]}) for b in legacy)}
        assert len(answers) == 1 and next(iter(answers))[0] == 422
        for field in ("path", "model", "layer", "site"):  # nothing path-like is accepted next to the name
            reply = post(client, {"sae": "tiny", "texts": [TEXT], field: str(sae_folder)})
            assert reply.status_code == 422 and field in reply.json()["detail"], field


def test_weights_outside_the_data_folder_are_refused(shared_index: Any, tmp_path: Path) -> None:
    _, engine, _, folder = shared_index
    fresh = LocalEncoder(device="cpu")
    try:
        with worker_client(engine, tmp_path / "another-data-dir", fresh) as client:
            reply = post(client, {"sae": "tiny", "texts": [TEXT]})
        assert reply.status_code == 503
        detail = reply.json()["detail"]
        assert "outside this worker's data folder (JUMPSCOPE_DATA_DIR)" in detail
        assert_no_host_path(detail, folder, tmp_path)
        assert fresh.sae_loads == 0 and fresh.model_loads == 0  # refused before anything was read
    finally:
        fresh.close()


def test_worker_errors_name_no_host_path(registered: tuple[Engine, Any], tmp_path: Path) -> None:
    engine, _ = registered
    cfg = tmp_path / "data" / "saes" / "tiny" / "cfg.json"
    cfg.unlink()
    fresh = LocalEncoder(device="cpu")
    try:
        with worker_client(engine, tmp_path / "data", fresh) as client:
            reply = post(client, {"sae": "tiny", "texts": [TEXT]})
        assert reply.status_code == 503
        detail = reply.json()["detail"]
        assert "cannot load SAE 'tiny'" in detail and "no cfg.json" in detail and "<path>" in detail
        assert_no_host_path(detail, tmp_path)
    finally:
        fresh.close()


# --- a hostile cfg.json -----------------------------------------------------------------------------------------------


def _rewrite_cfg(folder: Path, **fields: Any) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, **fields}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_sae": 10**12}, r"d_sae must be in 1\.\.67,108,864, got 1,000,000,000,000"),
        ({"d_sae": 1e12}, r"d_sae must be a whole number, got 1000000000000\.0"),
        ({"d_in": -64}, r"d_in must be in 1\.\.65,536, got -64"),
        ({"d_sae": "40"}, r"d_sae must be a whole number, got '40'"),
        ({"d_in": 10**6, "d_sae": 10**6}, r"d_in must be in 1\.\.65,536"),
        ({"d_sae": 2 * D_SAE}, rf"W_enc has shape \(64, {D_SAE}\), expected \(64, {2 * D_SAE}\).*disagree"),
        ({"architecture": "topk", "k": 10**9}, r"k must be in 1\.\.d_sae"),
    ],
)
def test_a_hostile_cfg_is_refused_before_anything_is_allocated(
    registered: tuple[Engine, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any],
    message: str,
) -> None:  # fmt: skip
    from trainer.formats import native

    def never(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the weights were read or the SAE built before the config was checked")

    monkeypatch.setattr(native, "read_safetensors", never)
    monkeypatch.setattr(native, "sae_from_tensors", never)
    engine, _ = registered
    sae_folder = tmp_path / "data" / "saes" / "tiny"
    _rewrite_cfg(sae_folder, **fields)
    start = time.monotonic()
    with pytest.raises(SAEFormatError, match=message):
        native.load_native(sae_folder)
    assert time.monotonic() - start < 1.0
    fresh = LocalEncoder(device="cpu")
    try:
        with worker_client(engine, tmp_path / "data", fresh) as client:
            reply = post(client, {"sae": "tiny", "texts": [TEXT]})
        assert reply.status_code == 503, reply.text
        detail = reply.json()["detail"]
        assert re.search(message, detail), detail
        assert_no_host_path(detail, tmp_path)
    finally:
        fresh.close()


# --- bounds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"features": list(range(257))}, "features"),
        ({"features": [-1]}, "features"),
        ({"texts": [TEXT] * 17}, "texts"),
        ({"texts": []}, "texts"),
        ({"texts": [""]}, "texts"),
        ({"texts": ["x" * 20_001]}, "texts"),
        ({"top_k": 0}, "top_k"),
        ({"sae": ""}, "sae"),
        ({"sae": "x" * 201}, "sae"),
    ],
)
def test_the_request_is_bounded_as_the_public_api(
    shared_index: Any, encoder: LocalEncoder, change: dict[str, Any], field: str
) -> None:
    _, engine, _, folder = shared_index
    with worker_client(engine, folder / "data", encoder) as client:
        reply = post(client, {"sae": "tiny", "texts": [TEXT], **change})
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.startswith(field), detail


def test_256_dense_features_are_fine(shared_index: Any, encoder: LocalEncoder) -> None:
    _, engine, _, folder = shared_index
    with worker_client(engine, folder / "data", encoder) as client:
        at_limit = post(client, {"sae": "tiny", "texts": [TEXT], "features": [0] * 256})
        assert at_limit.status_code == 200, at_limit.text
        out_of_range = post(client, {"sae": "tiny", "texts": [TEXT], "features": [D_SAE]})
        assert out_of_range.status_code == 422 and "out of range" in out_of_range.json()["detail"]
