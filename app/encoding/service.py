"""One encode request's work (one SAE, or one text and several SAEs of a model), shared by the REST API
and the pages: look up the SAE, take a turn at the process's gate (app.encoding.gate), then encode.

Nothing here runs on the event loop for long: the SAE lookup is a database query in a thread
(cached a few seconds), and the encoder tokenises and runs the model in its own threads.
"""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.encoding.gate import EncodeGate
from app.encoding.targets import cached_target, encode_target
from app.encoding.types import Encoder, TextEncoding


async def encode_texts(
    request: Request,
    sae: str,
    texts: list[str],
    *,
    top_k: int | None,
    features: list[int] | None,
    include_bos: bool,
) -> list[TextEncoding]:
    """Encode `texts` with the SAE named `sae` (NotFound, EncodeError, EncoderUnavailable, TooManyRequests)."""
    target = cached_target(request, sae)
    if target is None:  # a database query: in a thread
        target = await run_in_threadpool(encode_target, request, sae)
    gate: EncodeGate = request.app.state.encode_gate
    encoder: Encoder = request.app.state.encoder
    async with gate.turn():
        return await encoder.encode(target, texts, top_k=top_k, features=features, include_bos=include_bos)


async def encode_multi(
    request: Request, saes: list[str], text: str, *, top_k: int | None, include_bos: bool
) -> list[TextEncoding]:
    """Encode one text with several SAEs of one model in one forward pass (NotFound, EncodeError, ...)."""
    targets = []
    for sae in saes:
        target = cached_target(request, sae)
        targets.append(target if target is not None else await run_in_threadpool(encode_target, request, sae))
    gate: EncodeGate = request.app.state.encode_gate
    encoder: Encoder = request.app.state.encoder
    async with gate.turn():
        return await encoder.encode_multi(targets, text, top_k=top_k, include_bos=include_bos)
