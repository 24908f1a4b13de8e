"""Smoke test: `jumpscope serve` runs real uvicorn on a free loopback port; httpx calls it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.communicate()[0]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_real_uvicorn_serves_the_api(shared_index: Any) -> None:
    url, _, _, folder = shared_index
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"), "JUMPSCOPE_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "encoder": "ok"}
            assert [s["name"] for s in client.get("/api/v1/saes").json()] == ["tiny"]
            out = client.post("/api/v1/saes/tiny/encode", json={"text": "the lazy dog", "top_k": 3}).json()
            assert out["tokens"][0] == "<bos>" and all(len(a) <= 3 for a in out["activations"])
            assert client.get("/api/v1/saes/tiny/features/0").status_code == 200
            assert client.get("/api/v1/saes/tiny/features/9999").status_code == 404
            assert "openapi" in client.get("/openapi.json").json()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "writes are open" in output or "no API tokens are configured" in output
