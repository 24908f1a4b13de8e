"""OpenAIChat against real HTTP servers: `jumpscope llm-serve` on a tiny chat model, and scripted servers
that answer garbage, errors, slowly or with rate limits."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.settings import Settings
from app.interp.llm.base import ChatBackend, LLMError, Message
from app.interp.llm.factory import backend_from_spec
from app.interp.llm.local_hf import LocalChat
from app.interp.llm.openai_compat import OpenAIChat, normalise_base_url
from tests.app.conftest import free_port, wait_ready
from tests.app.interp.llm_fixtures import Reply, Scripted, build_chat_model, completion, scripted_server

KEY = "sk-test-a1b2c3d4e5f6"
ASK = [Message("system", "You explain features."), Message("user", "The feature fires on the word after if.")]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def served(chat_dir: Path) -> Iterator[str]:
    """`jumpscope llm-serve` (real uvicorn in its own process) on the tiny model, needing KEY; its base URL."""
    port = free_port()
    env = {**os.environ, "JUMPSCOPE_LLM_API_KEY": KEY, "JUMPSCOPE_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "llm-serve", "--model", str(chat_dir), "--port", str(port), "--require-key",
         "--max-tokens-cap", "64", "--max-prompt-chars", "2000", "--threads", "1", "--log-level", "warning"],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def client(base: str, **kwargs: object) -> OpenAIChat:
    return OpenAIChat(base, kwargs.pop("model", "m"), kwargs.pop("api_key", KEY), **kwargs)  # type: ignore[arg-type]


def failing(script: list[Reply], match: str, *, logprobs: int = 0, **kwargs: object) -> tuple[Scripted, LLMError]:
    """Run one chat against a scripted server that must end in LLMError matching `match`."""
    with scripted_server(script) as server, pytest.raises(LLMError, match=match) as err:
        asyncio.run(client(server.base, **kwargs).chat(ASK, max_tokens=2, logprobs=logprobs))
    return server, err.value


# --- against llm-serve --------------------------------------------------------------------------------------------


def test_the_served_model_answers_like_the_model_in_process(served: str, chat_dir: Path) -> None:
    remote = OpenAIChat(served, str(chat_dir), KEY)
    assert isinstance(remote, ChatBackend) and remote.name == f"openai:{served}/v1#{chat_dir}"
    local = LocalChat(str(chat_dir), device="cpu")
    for messages in (ASK, [Message("user", "Activation 0 1 2")]):
        there = asyncio.run(remote.chat(messages, max_tokens=16))
        here = asyncio.run(local.chat(messages, max_tokens=16))
        assert there.text == here.text and there.model == str(chat_dir)
        assert there.finish_reason == here.finish_reason and there.completion_tokens == here.completion_tokens
        assert there.tokens is None


def test_logprobs_round_trip_through_the_api(served: str, chat_dir: Path) -> None:
    remote = OpenAIChat(served, str(chat_dir), KEY)
    local = LocalChat(str(chat_dir), device="cpu")
    there = asyncio.run(remote.chat(ASK, max_tokens=10, logprobs=4))
    here = asyncio.run(local.chat(ASK, max_tokens=10, logprobs=4))
    assert there.tokens is not None and here.tokens is not None and len(there.tokens) == len(here.tokens) > 0
    for a, b in zip(there.tokens, here.tokens, strict=True):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert a.top.keys() == b.top.keys()
        assert all(a.top[k] == pytest.approx(b.top[k], abs=1e-5) for k in a.top)


def test_concurrent_requests_all_come_back_in_order(served: str, chat_dir: Path) -> None:
    remote = OpenAIChat(served, str(chat_dir), KEY, concurrency=2)
    prompts = [[Message("user", f"feature {i}")] for i in range(5)]

    async def run() -> list[str]:
        try:
            return [r.text for r in await asyncio.gather(*(remote.chat(p, max_tokens=6) for p in prompts))]
        finally:
            await remote.aclose()

    alone = [asyncio.run(OpenAIChat(served, str(chat_dir), KEY).chat(p, max_tokens=6)).text for p in prompts]
    assert asyncio.run(run()) == alone


def test_a_missing_or_wrong_key_is_refused_without_retries(served: str, chat_dir: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(LLMError, match=r"answered 401 .*JUMPSCOPE_LLM_API_KEY"):
        asyncio.run(OpenAIChat(served, str(chat_dir), None, backoff_s=5).chat(ASK, max_tokens=2))
    with pytest.raises(LLMError, match=r"answered 403 \(wrong API key\)") as err:
        asyncio.run(OpenAIChat(served, str(chat_dir), "sk-wrong-key", backoff_s=5).chat(ASK, max_tokens=2))
    assert "sk-wrong-key" not in str(err.value)
    assert time.perf_counter() - start < 5  # not retried (a retry would wait 5 s)


def test_an_unknown_model_is_a_404_that_names_the_fix(served: str) -> None:
    with pytest.raises(LLMError, match=r"answered 404 .*not served here.*--llm-model"):
        asyncio.run(OpenAIChat(served, "llama3.1:8b", KEY).chat(ASK, max_tokens=2))


def test_llm_serve_bounds_requests_with_422s(served: str, chat_dir: Path) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{served}/v1/chat/completions"
    ok = {"model": str(chat_dir), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(url, json=ok, headers=headers, timeout=30).status_code == 200
    for bad, says in (
        ({**ok, "max_tokens": 65}, "over this server's cap of 64"),
        ({**ok, "messages": [{"role": "user", "content": "x" * 2001}]}, "2001 characters"),
        ({**ok, "messages": []}, "messages"),
        ({**ok, "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({**ok, "stream": True}, "streaming is not supported"),
        ({**ok, "n": 2}, "n:"),
        ({**ok, "top_logprobs": 21}, "top_logprobs"),
        ({**ok, "temperature": -1}, "temperature"),
        ({**ok, "messages": [{"role": "user", "content": "fox " * 480}], "max_tokens": 64}, "context of 512"),
    ):
        response = httpx.post(url, json=bad, headers=headers, timeout=30)
        assert response.status_code == 422, (bad, response.text)
        assert says in response.json()["error"]["message"] and response.json()["detail"]
    garbage = httpx.post(url, content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert garbage.status_code == 422
    huge = httpx.post(url, content=b"x" * 1_100_000, headers=headers, timeout=30)
    assert huge.status_code == 413


def test_llm_serve_speaks_the_openai_shapes(served: str, chat_dir: Path) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    listed = httpx.get(f"{served}/v1/models", headers=headers, timeout=30).json()
    assert [m["id"] for m in listed["data"]] == [str(chat_dir)] and listed["object"] == "list"
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 3,
            "logprobs": True, "top_logprobs": 2, "temperature": 0, "seed": 1, "stop": None}  # fmt: skip
    reply = httpx.post(f"{served}/v1/chat/completions", json=body, headers=headers, timeout=30).json()
    choice = reply["choices"][0]
    assert reply["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length") and reply["usage"]["completion_tokens"] <= 3
    entries = choice["logprobs"]["content"]
    assert len(entries) == reply["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) <= 2 and e["bytes"] == list(e["token"].encode()) for e in entries)
    no_key = httpx.get(f"{served}/v1/models", timeout=30)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{served}/healthz", timeout=30).status_code == 200  # liveness needs no key


# --- against scripted servers -------------------------------------------------------------------------------------


def test_the_key_goes_in_a_bearer_header_and_never_into_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    server, err = failing([Reply(503, echo), Reply(401, echo)], "answered 401", backoff_s=0.01)
    assert [s.headers["authorization"] for s in server.seen] == [f"Bearer {KEY}"] * 2
    assert [s.path for s in server.seen] == ["/v1/chat/completions"] * 2
    assert "Incorrect API key provided: ***" in str(err)
    assert KEY not in str(err) and KEY not in repr(err)
    assert KEY not in caplog.text and "answered 503" in caplog.text  # the retry was logged, redacted
    assert KEY not in repr(client(server.base))


def test_no_key_sends_no_authorization_header() -> None:
    with scripted_server([Reply(200, completion("fine"))]) as server:
        reply = asyncio.run(OpenAIChat(server.base, "m").chat(ASK, max_tokens=2))
    assert reply.text == "fine" and "authorization" not in server.seen[0].headers


def test_the_request_carries_the_openai_fields() -> None:
    with scripted_server([Reply(200, completion()), Reply(200, completion())]) as server:
        asyncio.run(client(server.base, model="llama3.1:8b").chat(ASK, max_tokens=7, temperature=0.5))
        asyncio.run(client(server.base).chat(ASK, max_tokens=7, logprobs=3))
    plain, with_logprobs = server.seen[0].body, server.seen[1].body
    assert plain == {
        "model": "llama3.1:8b",
        "messages": [{"role": "system", "content": ASK[0].content}, {"role": "user", "content": ASK[1].content}],
        "max_tokens": 7,
        "temperature": 0.5,
    }
    assert with_logprobs["logprobs"] is True and with_logprobs["top_logprobs"] == 3


def test_a_server_that_is_down_fails_quickly_after_the_retries() -> None:
    base = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(LLMError) as err:
        asyncio.run(client(base, max_retries=2, backoff_s=0.05).chat(ASK, max_tokens=2))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert f"could not connect to {base}/v1/chat/completions" in message
    assert "is the server running" in message and "after 3 attempts" in message


def test_non_json_is_an_error_not_retried() -> None:
    page = Reply(200, "<html>Welcome to nginx</html>", {"Content-Type": "text/html"})
    server, _ = failing([page], r"answered 200 with a body that is not JSON .*Welcome to nginx.*/v1", backoff_s=0.01)
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    "body",
    [{"result": "hello"}, {"choices": []}, {"choices": [{"message": {"content": 42}}]}, [1, 2], "null"],
    ids=["no-choices", "empty-choices", "content-not-text", "a-list", "null"],
)
def test_a_wrong_shape_is_an_error_not_retried(body: object) -> None:
    server, _ = failing([Reply(200, body)], "not with a chat completion", backoff_s=0.01)
    assert len(server.seen) == 1


def test_malformed_logprobs_are_an_error_and_missing_ones_are_none() -> None:
    bad = completion(logprobs={"content": [{"token": "a", "logprob": "high"}]})
    with scripted_server([Reply(200, completion(logprobs=None)), Reply(200, bad)]) as server:
        assert asyncio.run(client(server.base).chat(ASK, max_tokens=2, logprobs=2)).tokens is None
        with pytest.raises(LLMError, match="malformed logprobs"):
            asyncio.run(client(server.base).chat(ASK, max_tokens=2, logprobs=2))


def test_5xx_is_retried_then_succeeds() -> None:
    with scripted_server(
        [Reply(500, "oops"), Reply(502, {"detail": "bad gateway"}), Reply(200, completion("ok"))]
    ) as s:
        reply = asyncio.run(client(s.base, max_retries=2, backoff_s=0.01).chat(ASK, max_tokens=2))
    assert reply.text == "ok" and len(s.seen) == 3


def test_5xx_until_the_retries_run_out_names_the_status() -> None:
    oom = Reply(500, {"error": {"message": "CUDA out of memory"}})
    match = r"answered 500 \(CUDA out of memory\).*logs \(after 3 attempts\)"
    server, _ = failing([oom] * 3, match, max_retries=2, backoff_s=0.01)
    assert len(server.seen) == 3


def test_4xx_other_than_429_is_not_retried() -> None:
    refusal = {"error": {"message": "top_logprobs is not supported", "type": "invalid_request_error"}}
    match = r"answered 400 \(top_logprobs is not supported\).*supports logprobs"
    server, _ = failing([Reply(400, refusal), Reply(200, completion())], match, logprobs=5, backoff_s=0.01)
    assert len(server.seen) == 1


def test_429_waits_out_retry_after() -> None:
    limited = Reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
    with scripted_server([limited, Reply(200, completion("after the wait"))]) as server:
        start = time.perf_counter()
        reply = asyncio.run(client(server.base, backoff_s=0.01).chat(ASK, max_tokens=2))
        waited = time.perf_counter() - start
    assert reply.text == "after the wait" and len(server.seen) == 2
    assert 0.95 <= waited < 5  # the back-off alone would have waited ~0.02 s


def test_a_retry_after_beyond_the_limit_fails_at_once() -> None:
    with scripted_server([Reply(429, {"error": {"message": "quota"}}, {"Retry-After": "3600"})]) as server:
        start = time.perf_counter()
        with pytest.raises(LLMError, match=r"answered 429 and asks to retry after 3600 s"):
            asyncio.run(client(server.base, max_retry_after_s=60).chat(ASK, max_tokens=2))
    assert time.perf_counter() - start < 2 and len(server.seen) == 1


def test_a_slow_server_times_out_and_is_retried() -> None:
    slow = Reply(200, completion("late"), delay_s=1.5)
    with scripted_server([slow, slow]) as server:
        start = time.perf_counter()
        with pytest.raises(
            LLMError, match=r"did not answer within 0.3 s.*JUMPSCOPE_LLM_TIMEOUT_S \(after 2 attempts\)"
        ):
            asyncio.run(client(server.base, timeout_s=0.3, max_retries=1, backoff_s=0.01).chat(ASK, max_tokens=2))
    assert time.perf_counter() - start < 1.5 and len(server.seen) == 2


def test_the_base_url_works_with_or_without_v1() -> None:
    with scripted_server([Reply(200, completion())] * 4) as server:
        for base in (server.base, f"{server.base}/", f"{server.base}/v1/", f"{server.base}/v1/chat/completions"):
            asyncio.run(client(base).chat(ASK, max_tokens=2))
    assert [s.path for s in server.seen] == ["/v1/chat/completions"] * 4
    assert normalise_base_url("https://host/v1beta/openai/") == "https://host/v1beta/openai"
    assert normalise_base_url("http://localhost:11434") == "http://localhost:11434/v1"
    for bad in ("localhost:8000", "ftp://host/v1", "http://", ""):
        with pytest.raises(ValueError, match="base URL"):
            normalise_base_url(bad)


def test_credentials_in_the_url_stay_out_of_the_name() -> None:
    chat = OpenAIChat("https://user:hunter2@llm.example.com/v1", "m")
    assert (
        "hunter2" not in chat.name and "hunter2" not in chat.url and chat.name == "openai:https://llm.example.com/v1#m"
    )


def test_one_backend_serves_several_event_loops() -> None:
    with scripted_server([Reply(200, completion("one")), Reply(200, completion("two"))]) as server:
        chat = client(server.base)
        assert asyncio.run(chat.chat(ASK, max_tokens=2)).text == "one"
        assert asyncio.run(chat.chat(ASK, max_tokens=2)).text == "two"  # a new loop, a new connection pool


def test_the_factory_builds_an_http_backend_from_settings() -> None:
    settings = Settings(llm_api_key=KEY, llm_concurrency=3, llm_timeout_s=7, llm_max_retries=1)
    backend = backend_from_spec("http://localhost:11434", model="llama3.1:8b", settings=settings)
    assert isinstance(backend, OpenAIChat) and backend.name == "openai:http://localhost:11434/v1#llama3.1:8b"
    assert (backend.concurrency, backend.timeout_s, backend.max_retries) == (3, 7, 1)
    assert KEY not in repr(backend) and KEY not in repr(settings)
    with pytest.raises(ValueError, match="--llm-model"):
        backend_from_spec("https://api.openai.com/v1", model=None, settings=settings)
