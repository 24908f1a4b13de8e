"""Smoke test: `jumpscope serve` runs real uvicorn on a free loopback port; httpx calls it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.app.conftest import jumpscope_serve


def test_real_uvicorn_serves_the_api(shared_index: Any) -> None:
    url, _, _, folder = shared_index
    with jumpscope_serve(url, folder) as served, httpx.Client(base_url=served.base, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "encoder": "ok"}
        assert [s["name"] for s in client.get("/api/v1/saes").json()] == ["tiny"]
        out = client.post("/api/v1/saes/tiny/encode", json={"text": "the lazy dog", "top_k": 3}).json()
        assert out["tokens"][0] == "<bos>" and all(len(a) <= 3 for a in out["activations"])
        assert client.get("/api/v1/saes/tiny/features/0").status_code == 200
        assert client.get("/api/v1/saes/tiny/features/9999").status_code == 404
        assert "openapi" in client.get("/openapi.json").json()
    assert "writes are open" in served.output or "no API tokens are configured" in served.output
