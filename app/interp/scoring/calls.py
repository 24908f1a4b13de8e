"""Issue many chat calls at once; the backend bounds its own concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.interp.llm.base import ChatBackend, ChatReply, Message


async def chat_all(
    backend: ChatBackend, prompts: Sequence[Sequence[Message]], *, max_tokens: Sequence[int], logprobs: int = 0
) -> list[ChatReply]:
    """The replies to `prompts`, in order, from concurrent calls (greedy decoding).

    If one call raises (LLMError: the endpoint is down), the others are cancelled and the error
    propagates: a scorer has no partial result to keep, and the caller keeps what it stored."""
    tasks = [
        asyncio.ensure_future(backend.chat(messages, max_tokens=limit, temperature=0.0, logprobs=logprobs))
        for messages, limit in zip(prompts, max_tokens, strict=True)
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
