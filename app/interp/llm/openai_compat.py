"""ChatBackend over any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, Ollama, llama.cpp
server, OpenAI, `jumpscope llm-serve`), with httpx.

A semaphore bounds the requests in flight. Connection errors, timeouts, 429 and 5xx are retried
with exponential back-off and jitter (tenacity), a 429's or 503's Retry-After is honoured; any
other 4xx and malformed replies are not retried. Every failure ends in LLMError naming the URL,
the status and what to check. The API key goes only into the Authorization header: it is
redacted from every message and log line, even when a server echoes it back.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from app.interp.llm.base import ChatReply, LLMError, Message, TokenLogprob

log = logging.getLogger(__name__)

KEY_ENV = "JUMPSCOPE_LLM_API_KEY"
"""Where the API key comes from (Settings.llm_api_key)."""


def normalise_base_url(base_url: str) -> str:
    """The API base URL, ending before /chat/completions: a bare host gets /v1; a given path is kept.

    'http://localhost:11434' and 'http://localhost:11434/v1/' -> 'http://localhost:11434/v1';
    'https://host/api/v1/chat/completions' -> 'https://host/api/v1'; a path that does not end in
    /v1 (e.g. '.../v1beta/openai') is used as given. ValueError for anything but http(s) with a host.
    """
    try:
        url = httpx.URL(base_url.strip())
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"{base_url!r} is not a URL: give the base URL, e.g. http://localhost:8000/v1") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{base_url!r} is not an http(s) URL: give the base URL, e.g. http://localhost:8000/v1")
    path = url.path.rstrip("/").removesuffix("/chat/completions").rstrip("/")
    return str(url.copy_with(path=path or "/v1", fragment=None))


def display_url(url: str) -> str:
    """The URL without user:password, for names, messages and logs."""
    return str(httpx.URL(url).copy_with(userinfo=b""))


class _Retryable(Exception):
    """A failure worth another attempt (connect error, timeout, 429, 5xx), with the server's Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _LoopState:
    """The client and the semaphore of one event loop (asyncio objects belong to the loop they ran on)."""

    client: httpx.AsyncClient
    slots: asyncio.Semaphore


class OpenAIChat:
    """ChatBackend over an OpenAI-compatible chat completions endpoint.

    base_url: with or without /v1 (see normalise_base_url). model: the server's model name.
    api_key: sent as `Authorization: Bearer ...` when given. concurrency: requests in flight at
    once. timeout_s: per request (connect, read, write). max_retries: further attempts after the
    first for connect errors, timeouts, 429 and 5xx; backoff_s / max_backoff_s shape the waits
    (exponential with jitter), a Retry-After up to max_retry_after_s is waited out, a longer one fails.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 120.0,
    ) -> None:
        if not model or not model.strip():
            raise ValueError("an OpenAI-compatible endpoint needs a model name (--llm-model), e.g. llama3.1:8b")
        if concurrency < 1 or timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError(
                f"concurrency must be >= 1, timeout_s > 0, max_retries and backoff_s >= 0 "
                f"(got {concurrency}, {timeout_s}, {max_retries}, {backoff_s})"
            )
        self.base_url = normalise_base_url(base_url)
        self.url = display_url(self.base_url) + "/chat/completions"
        """The endpoint as messages show it (no credentials)."""
        self.model = model.strip()
        self.name = f"openai:{display_url(self.base_url)}#{self.model}"
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s, self.max_retry_after_s = backoff_s, max_backoff_s, max_retry_after_s
        self._endpoint = httpx.URL(self.base_url).copy_with(path=httpx.URL(self.base_url).path + "/chat/completions")
        self._api_key = api_key or None
        self._backoff = wait_random_exponential(multiplier=backoff_s, max=max_backoff_s)
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    def __repr__(self) -> str:
        return f"OpenAIChat({self.url!r}, {self.model!r}, api_key={'***' if self._api_key else None})"

    async def chat(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0, logprobs: int = 0
    ) -> ChatReply:
        """Answer `messages` (see ChatBackend.chat); `logprobs` N > 0 sends `logprobs: true, top_logprobs: N`."""
        if max_tokens < 1 or not temperature >= 0 or not 0 <= logprobs <= 20:
            raise ValueError(f"max_tokens >= 1, temperature >= 0 and 0 <= logprobs <= 20 (got {max_tokens}, "
                             f"{temperature}, {logprobs})")  # fmt: skip
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if logprobs > 0:
            body |= {"logprobs": True, "top_logprobs": logprobs}
        state = self._state()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with state.slots:
                        data = await self._post(state.client, body)
        except _Retryable as exc:
            attempts = self.max_retries + 1
            raise LLMError(f"{exc} (after {attempts} attempt{'s' if attempts > 1 else ''})") from None
        return self._reply(data, logprobs)

    async def aclose(self) -> None:
        """Close this event loop's connections (other loops' clients are dropped)."""
        states, self._states = self._states, {}
        loop = asyncio.get_running_loop()
        if loop in states:
            await states[loop].client.aclose()

    # --- one attempt ------------------------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if loop not in self._states:
            self._states = {k: v for k, v in self._states.items() if not k.is_closed()}
            headers = {"User-Agent": "jumpscope"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            )
            self._states[loop] = _LoopState(client, asyncio.Semaphore(self.concurrency))
        return self._states[loop]

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> Any:
        """One request: the parsed JSON body of a 200; _Retryable or LLMError otherwise."""
        try:
            response = await client.post(self._endpoint, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"{self.url} did not answer within {self.timeout_s:g} s ({type(exc).__name__}): check the server's "
                "load, or raise JUMPSCOPE_LLM_TIMEOUT_S"
            ) from None
        except httpx.ConnectError as exc:
            raise _Retryable(
                f"could not connect to {self.url} ({self._redact(str(exc)) or type(exc).__name__}): is the server "
                "running, and is the base URL right (e.g. http://localhost:11434/v1 for Ollama)?"
            ) from None
        except httpx.HTTPError as exc:  # the connection dropped mid-answer, a protocol error, ...
            reason = f"{type(exc).__name__}: {self._redact(str(exc))}"
            raise _Retryable(f"{self.url}: the request failed ({reason})") from None
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise LLMError(
                    f"{self.url} answered 200 with a body that is not JSON ({self._excerpt(response)!r}): check that "
                    "the base URL is an OpenAI-compatible API (it usually ends in /v1)"
                ) from None
        detail = self._server_message(response)
        if status == 429 or status >= 500:
            retry_after = _retry_after(response)
            if retry_after is not None and retry_after > self.max_retry_after_s:
                raise LLMError(
                    f"{self.url} answered {status} and asks to retry after {retry_after:.0f} s, longer than "
                    f"{self.max_retry_after_s:.0f} s{detail}: wait, or send fewer requests (JUMPSCOPE_LLM_CONCURRENCY)"
                )
            hint = "rate-limited: lower JUMPSCOPE_LLM_CONCURRENCY" if status == 429 else "check the server's logs"
            raise _Retryable(f"{self.url} answered {status}{detail}: {hint}", retry_after)
        raise LLMError(f"{self.url} answered {status}{detail}: {_hint(status, self.model)}")

    def _reply(self, data: Any, logprobs: int) -> ChatReply:
        """A ChatReply from the JSON body; LLMError naming what is missing."""
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            start = self._redact(json.dumps(data)[:200])
            raise LLMError(
                f"{self.url} answered 200 but not with a chat completion (no choices[0].message.content: "
                f"{type(exc).__name__} {self._redact(str(exc))}; the body starts {start!r}): "
                "check that the server speaks the OpenAI chat completions API"
            ) from None
        tokens = self._tokens(choice.get("logprobs")) if logprobs > 0 else None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        finish = choice.get("finish_reason")
        return ChatReply(
            text=content or "",
            model=str(data.get("model") or self.model),
            tokens=tokens,
            finish_reason=finish if isinstance(finish, str) else None,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
        )

    def _tokens(self, block: Any) -> tuple[TokenLogprob, ...] | None:
        """choices[0].logprobs.content -> TokenLogprobs (the chosen token added to its alternatives); None if absent."""
        if block is None or (isinstance(block, dict) and block.get("content") is None):
            return None  # the server does not return logprobs
        try:
            out = []
            for entry in block["content"]:
                token, logprob = entry["token"], _logprob(entry["logprob"])
                if not isinstance(token, str):
                    raise TypeError("token is not a string")
                top: dict[str, float] = {}
                for alt in entry.get("top_logprobs") or ():
                    if not isinstance(alt["token"], str):
                        raise TypeError("top_logprobs token is not a string")
                    top.setdefault(alt["token"], _logprob(alt["logprob"]))
                if top:
                    top.setdefault(token, logprob)
                out.append(TokenLogprob(token=token, logprob=logprob, top=top))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LLMError(
                f"{self.url} answered with malformed logprobs ({type(exc).__name__}: {self._redact(str(exc))}): "
                "the server's logprobs are not in the OpenAI shape (choices[0].logprobs.content[i].top_logprobs)"
            ) from None
        return tuple(out)

    # --- retries ----------------------------------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the server's Retry-After, else exponential back-off with full jitter
        (uniform in [0, min(max_backoff_s, backoff_s * 2^(attempt - 1))])."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s; retrying in %.1f s (attempt %d of %d)", exc, delay, state.attempt_number + 1,
                    self.max_retries + 1)  # fmt: skip

    # --- messages ---------------------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _excerpt(self, response: httpx.Response, limit: int = 200) -> str:
        text = " ".join(response.text.split())
        return self._redact(text[:limit] + ("..." if len(text) > limit else ""))

    def _server_message(self, response: httpx.Response) -> str:
        """' (the server's error message)' from an OpenAI / FastAPI error body, or an excerpt; '' if empty."""
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            excerpt = self._excerpt(response)
            return f" ({excerpt})" if excerpt else ""
        message: Any = data
        if isinstance(data, dict):
            error = data.get("error")
            message = (error.get("message") if isinstance(error, dict) else error) or data.get("detail") or data
        text = message if isinstance(message, str) else json.dumps(message)
        text = " ".join(text.split())
        return f" ({self._redact(text[:300])})" if text else ""


def _hint(status: int, model: str) -> str:
    """What to check for a status that is not retried."""
    if status in (401, 403):
        return f"check the API key ({KEY_ENV}) and that it may use this model"
    if status == 404:
        return f"check the base URL (it usually ends in /v1) and that the server has the model {model!r} (--llm-model)"
    if status in (400, 413, 422):
        return f"the server refused the request: check the model {model!r} and whether it supports logprobs"
    if 300 <= status < 400:
        return "the server redirects: give the URL it redirects to as the base URL"
    return "check the base URL and the server's logs"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks to wait (Retry-After as seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _logprob(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"logprob {value!r} is not a number")
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
