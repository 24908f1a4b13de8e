"""`jumpscope llm-serve`: a small OpenAI-compatible server over one in-process chat model (LocalChat).

Several `jumpscope explain` workers can share one loaded model through it, and the HTTP backend
(OpenAIChat) is tested against it. It serves `POST /v1/chat/completions` (messages, max_tokens or
max_completion_tokens, temperature, logprobs, top_logprobs; the OpenAI response shape, with
`choices[0].logprobs.content[i].top_logprobs`), `GET /v1/models` and `GET /healthz`. Requests are
bounded (max_tokens cap, prompt size cap, body size): anything over is a 422 (413 for the body).
Errors carry both OpenAI's `{"error": {"message", "type"}}` and the project's `{"detail"}`.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.body_limit import BodyLimit
from app.core.errors import validation_message
from app.interp.llm.base import ChatReply, LLMError, Message
from app.interp.llm.local_hf import MAX_TOP_LOGPROBS, LocalChat, PromptRejected
from app.interp.llm.packaged import DEFAULT_LLM, is_default

DEFAULT_MAX_TOKENS = 256
"""max_tokens when a request gives none (capped by the server's max_tokens_cap)."""


class TextPart(BaseModel):
    """One part of a multi-part message content (only text is served)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """One chat message of a request."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    """A string, or a list of text parts (joined)."""

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat completions request this server honours (others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    """The served model's id (GET /v1/models); omitted = that one."""
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of max_tokens; max_tokens wins when both are given."""
    temperature: float = Field(1.0, ge=0, le=2)
    """0 = greedy; OpenAI's default is 1."""
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    n: int = Field(1, ge=1, le=1)
    """Only one choice per request."""
    stream: bool = False


def create_llm_app(
    chat: LocalChat,
    *,
    model_id: str | None = None,
    max_tokens_cap: int = 1024,
    max_prompt_chars: int = 100_000,
    max_request_bytes: int = 1_000_000,
    api_key: str | None = None,
) -> FastAPI:
    """An OpenAI-compatible FastAPI app serving `chat`.

    model_id: the id clients name (default chat.model_name). max_tokens_cap: the largest max_tokens
    a request may ask for. max_prompt_chars: characters over all messages. api_key: when set,
    /v1/* needs `Authorization: Bearer <api_key>` (401 without, 403 wrong).
    """
    if max_tokens_cap < 1 or max_prompt_chars < 1:
        raise ValueError("max_tokens_cap and max_prompt_chars must be at least 1")
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty: set it to a long random string, or leave it unset")
    served = model_id or chat.model_name
    default = served == DEFAULT_LLM  # then 'smollm2' names it too
    created = int(time.time())
    app = FastAPI(title="jumpscope llm-serve", version="1", description=f"OpenAI-compatible chat API over {served}")

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, validation_message(exc.errors()))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)

    if api_key is not None:
        expected = api_key.strip().encode()

        @app.middleware("http")
        async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.url.path.startswith("/v1/"):
                scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or not given.strip():
                    return _error(401, "this server needs 'Authorization: Bearer <key>'", kind="authentication_error",
                                  headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
                if not hmac.compare_digest(given.strip().encode(), expected):
                    return _error(403, "wrong API key", kind="authentication_error")
            return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the served model's id."""
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The one served model, in the OpenAI list shape."""
        model = {"id": served, "object": "model", "created": created, "owned_by": "jumpscope"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def completions(request: ChatRequest) -> dict[str, Any]:
        """Answer a chat completion request with the served model."""
        if request.model is not None and request.model != served and not (default and is_default(request.model)):
            raise HTTPException(404, f"model {request.model!r} is not served here; GET /v1/models lists {served!r}")
        if request.stream:
            raise HTTPException(422, "stream: streaming is not supported by llm-serve; send stream=false")
        max_tokens = request.max_tokens or request.max_completion_tokens or min(DEFAULT_MAX_TOKENS, max_tokens_cap)
        if max_tokens > max_tokens_cap:
            raise HTTPException(422, f"max_tokens: {max_tokens} is over this server's cap of {max_tokens_cap}")
        messages = [Message(role=m.role, content=m.text()) for m in request.messages]
        chars = sum(len(m.content) for m in messages)
        if chars > max_prompt_chars:
            raise HTTPException(422, f"messages: {chars} characters, over this server's cap of {max_prompt_chars}")
        top = request.top_logprobs or 0
        try:
            reply = await chat.complete(
                messages,
                max_tokens=max_tokens,
                temperature=request.temperature,
                logprobs=request.logprobs or top > 0,
                top_logprobs=top,
            )
        except PromptRejected as err:
            raise HTTPException(422, str(err)) from None
        except LLMError as err:
            raise HTTPException(503, str(err)) from None
        return _completion(reply, served, top if request.logprobs or top > 0 else None)

    app.add_middleware(BodyLimit, limit=max_request_bytes)
    return app


def _completion(reply: ChatReply, model: str, top_n: int | None) -> dict[str, Any]:
    """The OpenAI chat.completion object for a reply; logprobs only when top_n is not None."""
    logprobs = None
    if top_n is not None and reply.tokens is not None:
        content = []
        for token in reply.tokens:
            alternatives = sorted(token.top.items(), key=lambda item: -item[1])[:top_n]
            content.append(
                {
                    "token": token.token,
                    "logprob": token.logprob,
                    "bytes": list(token.token.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives],
                }
            )
        logprobs = {"content": content}
    prompt, completion = reply.prompt_tokens or 0, reply.completion_tokens or 0
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason or "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _error(status: int, message: str, *, kind: str | None = None, headers: Mapping[str, str] | None = None) -> Response:
    """An error body both OpenAI clients (error.message) and jumpscope's (detail) read."""
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "code": status}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)
