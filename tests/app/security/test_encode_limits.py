"""Finding 1 of the attack: one encode request must not stall the server or send an unbounded reply.

Through the public HTTP surface, on SQLite and Postgres: the reply cap (JUMPSCOPE_ENCODE_MAX_VALUES),
the bounded queue (JUMPSCOPE_ENCODE_MAX_CONCURRENT / _WAITING), the token rule
(JUMPSCOPE_ENCODE_REQUIRES_TOKEN) and the rate limit (JUMPSCOPE_ENCODE_RATE_LIMIT); and against a
real uvicorn server, /healthz answering while maximal encodes run, and 413 for a chunked body.
The latency figure under load is a benchmark (benchmarks/serve.py --health), not a test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.auth.tokens import add_token, remove_tokens
from app.core.database import session_scope
from app.core.errors import TooManyRequests
from app.core.settings import Settings
from app.encoding.gate import EncodeGate
from app.encoding.reply import reply_json
from app.encoding.schemas import DenseValues, EncodeBatchOut, EncodeOut, FeatureActivation
from app.encoding.types import TextEncoding
from app.server import create_app
from tests.app.conftest import D_SAE, jumpscope_serve

TEXT = "the quick brown fox jumps over lazy dog sparse features fire on some tokens and not others"


def client_for(shared_index: Any, tmp_path: Path, **settings: Any) -> TestClient:
    url, _, _, folder = shared_index
    base: dict[str, Any] = dict(database_url=url, data_dir=folder / "data", runs_dir=tmp_path / "runs",
                                device="cpu", encode_max_tokens=1024, encode_window_ms=1.0)  # fmt: skip
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


def n_values(reply: dict[str, Any]) -> int:
    return sum(len(a) for a in reply["activations"]) + sum(len(d["values"]) for d in reply["features"] or [])


def test_the_reply_is_capped(shared_index: Any, tmp_path: Path) -> None:
    with client_for(shared_index, tmp_path) as client:  # the default cap: the whole reply
        full = client.post("/api/v1/saes/tiny/encode", json={"text": TEXT}).json()
    total = n_values(full)
    assert total > 40, "the tiny SAE should fire on many tokens"
    cap = total - 1
    with client_for(shared_index, tmp_path, encode_max_values=cap) as client:
        over = client.post("/api/v1/saes/tiny/encode", json={"text": TEXT})
        assert over.status_code == 422 and f"{cap:,} values" in over.json()["detail"]
        assert "top_k" in over.json()["detail"]
        # top_k brings it under the cap: the same text is fine
        fine = client.post("/api/v1/saes/tiny/encode", json={"text": TEXT, "top_k": 1})
        assert fine.status_code == 200 and n_values(fine.json()) <= len(fine.json()["tokens"])
        # dense values are known before the forward pass: refused at once
        tokens = len(full["tokens"])
        dense = client.post("/api/v1/saes/tiny/encode", json={"text": TEXT, "features": list(range(D_SAE))})
        assert dense.status_code == 422 and f"{tokens:,} tokens x {D_SAE} features" in dense.json()["detail"]
        # in a batch, only the request over the cap fails
        many = client.post("/api/v1/saes/tiny/encode", json={"texts": ["lazy dog", TEXT]})
        assert many.status_code == 422
        assert client.post("/api/v1/saes/tiny/encode", json={"texts": ["lazy dog"]}).status_code == 200


def test_the_reply_has_the_documented_shape() -> None:
    """The JSON written in pieces is exactly what the pydantic reply models would give."""
    encs = [
        TextEncoding(tokens=["<bos>", "a", "b"], token_ids=[2, 10, 11], special=[True, False, False],
                     activations=[[], [(3, 1.5), (1, 0.25)], [(7, 2.0)]], dense={3: [0.0, 1.5, 0.0]}),
        TextEncoding(tokens=["x"], token_ids=[5], special=[False], activations=[[(0, 0.125)]]),
    ]  # fmt: skip

    def model(enc: TextEncoding) -> EncodeOut:
        return EncodeOut(
            tokens=enc.tokens, token_ids=enc.token_ids, special=enc.special,
            activations=[[FeatureActivation(index=i, value=v) for i, v in row] for row in enc.activations],
            features=None if enc.dense is None else [DenseValues(index=i, values=v) for i, v in enc.dense.items()],
        )  # fmt: skip

    assert json.loads(reply_json(encs[:1], single=True)) == model(encs[0]).model_dump(mode="json")
    batch = EncodeBatchOut(results=[model(e) for e in encs]).model_dump(mode="json")
    assert json.loads(reply_json(encs, single=False)) == batch
    many = TextEncoding(tokens=["t"] * 3000, token_ids=[1] * 3000, special=[False] * 3000,
                        activations=[[(i % 50, float(i))] * 5 for i in range(3000)])  # fmt: skip
    assert json.loads(reply_json([many], single=True)) == model(many).model_dump(mode="json")  # many pieces
    nan = TextEncoding(tokens=["t"], token_ids=[1], special=[False], activations=[[(0, float("nan"))]])
    assert json.loads(reply_json([nan], single=True))["activations"] == [[{"index": 0, "value": None}]]


def test_the_gate_bounds_work_and_queue() -> None:
    async def scenario() -> list[str]:
        gate = EncodeGate(concurrent=1, waiting=1)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def request(name: str) -> None:
            try:
                async with gate.turn():
                    outcomes.append(f"{name} runs")
                    await release.wait()
            except TooManyRequests as err:
                assert err.retry_after > 0
                outcomes.append(f"{name} refused")

        first = asyncio.create_task(request("a"))
        await asyncio.sleep(0)
        second = asyncio.create_task(request("b"))  # waits
        await asyncio.sleep(0)
        await request("c")  # the line is full: refused at once
        assert gate.running == 1 and gate.waiting == 1
        release.set()
        await asyncio.gather(first, second)
        return outcomes

    assert asyncio.run(scenario()) == ["a runs", "c refused", "b runs"]


def test_a_full_queue_answers_429(shared_index: Any, tmp_path: Path) -> None:
    """Many concurrent requests with no room to wait: some are turned away with Retry-After, none fail."""
    with client_for(shared_index, tmp_path, encode_max_concurrent=1, encode_max_waiting=0) as client:
        texts = [" ".join(TEXT.split() * 20)] * 16  # a few hundred tokens each: a request takes a while
        replies: list[httpx.Response] = []

        def post() -> None:
            replies.append(client.post("/api/v1/saes/tiny/encode", json={"texts": texts, "top_k": 1}))

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) <= {200, 429} and statuses[0] == 200 and statuses[-1] == 429, statuses
    busy = next(r for r in replies if r.status_code == 429)
    assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]


@pytest.fixture
def tokens(shared_index: Any) -> Iterator[dict[str, str]]:
    """Two rater tokens in the shared store, removed afterwards (the store is shared by the module)."""
    engine = shared_index[1]
    with session_scope(engine) as session:
        made = {name: add_token(session, name) for name in ("enc-a", "enc-b")}
    yield made
    with session_scope(engine) as session:
        for name in made:
            remove_tokens(session, name)


def test_encode_can_require_a_token(shared_index: Any, tmp_path: Path) -> None:
    with client_for(shared_index, tmp_path, encode_requires_token=True) as client:
        none_yet = client.post("/api/v1/saes/tiny/encode", json={"text": "hi"})
        assert none_yet.status_code == 401 and "jumpscope users add" in none_yet.json()["detail"]
        page = client.get("/saes/tiny/features/0", params={"text": "lazy dog"})  # the no-JS box says why
        assert page.status_code == 200 and "needs a token" in page.text


def test_encode_with_tokens(shared_index: Any, tmp_path: Path, tokens: dict[str, str]) -> None:
    with client_for(shared_index, tmp_path, encode_requires_token=True) as client:
        missing = client.post("/api/v1/saes/tiny/encode", json={"text": "hi"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        unknown = client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}, headers={"Authorization": "Bearer x"})
        assert unknown.status_code == 401
        good = {"Authorization": f"Bearer {tokens['enc-a']}"}
        assert client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}, headers=good).status_code == 200
    with client_for(shared_index, tmp_path) as client:  # tokens exist but encoding is open: no token needed
        assert client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}).status_code == 200


def test_rate_limit_per_client_and_per_token(shared_index: Any, tmp_path: Path, tokens: dict[str, str]) -> None:
    with client_for(shared_index, tmp_path, encode_rate_limit="2/minute") as client:
        post = [client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}) for _ in range(3)]
        assert [r.status_code for r in post] == [200, 200, 429]
        assert "(2/minute)" in post[2].json()["detail"] and int(post[2].headers["retry-after"]) >= 1
        # a token holder is counted on their own, whatever address they come from
        a = {"Authorization": f"Bearer {tokens['enc-a']}"}
        b = {"Authorization": f"Bearer {tokens['enc-b']}"}
        statuses = [client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}, headers=a).status_code
                    for _ in range(3)]  # fmt: skip
        assert statuses == [200, 200, 429]
        assert client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}, headers=b).status_code == 200
        page = client.get("/saes/tiny/features/0", params={"text": "lazy dog"})  # the page shares the limit
        assert page.status_code == 200 and "rate limit" in page.text


def test_a_bad_rate_limit_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="not a rate limit"):
        Settings(encode_rate_limit="lots")


# --- real uvicorn ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(shared_index: Any) -> Iterator[str]:
    url, _, _, folder = shared_index
    with jumpscope_serve(url, folder) as server:
        yield server.base


def test_a_chunked_body_over_the_limit_is_413(served: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 50_000
        yield b'"}'

    reply = httpx.post(
        f"{served}/api/v1/saes/tiny/encode", content=chunks(), headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413 and "over 1000000 bytes" in reply.json()["detail"]
    small = httpx.post(f"{served}/api/v1/saes/tiny/encode", content=iter([b'{"text": ', b'"lazy dog"}']),
                       headers={"content-type": "application/json"}, timeout=120)  # fmt: skip
    assert small.status_code == 200, small.text  # a chunked body under the limit is read as usual


def test_health_answers_while_maximal_encodes_run(served: str) -> None:
    """Four concurrent maximal encodes (16 texts near the token limit): /healthz keeps answering."""
    long_text = " ".join(TEXT.split() * 40)  # near the 1,024-token limit of the tiny model
    body = {"texts": [long_text] * 16, "features": list(range(8))}
    done = threading.Event()
    statuses: list[int] = []

    def encode() -> None:
        statuses.append(httpx.post(f"{served}/api/v1/saes/tiny/encode", json=body, timeout=300).status_code)

    workers = [threading.Thread(target=encode) for _ in range(4)]
    for w in workers:
        w.start()
    waits: list[float] = []
    while any(w.is_alive() for w in workers):
        start = time.perf_counter()
        assert httpx.get(f"{served}/healthz", timeout=30).status_code == 200
        waits.append(time.perf_counter() - start)
        time.sleep(0.05)
    for w in workers:
        w.join()
    done.set()
    assert set(statuses) <= {200, 422}, statuses  # 422 only if a reply is over the default cap
    assert len(waits) >= 3, "the encodes ended before /healthz was asked"
    assert max(waits) < 5.0, f"/healthz took up to {max(waits):.1f} s while encodes ran"
