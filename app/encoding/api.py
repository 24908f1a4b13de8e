"""POST /api/v1/saes/{sae}/encode: text in, sparse per-token feature activations out; and
POST /api/v1/encode/multi: one text, several SAEs of one model, one forward pass.

The event loop only awaits here: the caller's token and rate limit are checked in a thread
(app.auth.encode_access), the request takes a turn at the process's gate (app.encoding.gate),
tokenising and the forward pass run in the encoder's threads, and the reply's JSON is written
in a thread in small pieces (app.encoding.reply). The reply's size is capped by the encoder
(JUMPSCOPE_ENCODE_MAX_VALUES).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from app.auth.deps import EncodeClientDep
from app.core.errors import BUSY, INVALID, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE
from app.encoding.reply import multi_json, reply_json
from app.encoding.schemas import EncodeBatchOut, EncodeIn, EncodeMulti, EncodeMultiOut, EncodeOut, EncodeText
from app.encoding.service import encode_multi as encode_multi_service
from app.encoding.service import encode_texts

router = APIRouter(prefix="/api/v1", tags=["encode"], responses=INVALID)


@router.post(
    "/saes/{sae}/encode", response_model=EncodeOut | EncodeBatchOut,
    responses={**NOT_FOUND, **UNAVAILABLE, **UNAUTHORIZED, **BUSY},
    summary="Encode text into the SAE's features",
)  # fmt: skip
async def encode(sae: str, body: EncodeIn, request: Request, _client: EncodeClientDep) -> Response:
    single = isinstance(body, EncodeText)
    texts = [body.text] if isinstance(body, EncodeText) else list(body.texts)
    results = await encode_texts(
        request, sae, texts, top_k=body.top_k, features=body.features, include_bos=body.include_bos
    )
    content = await asyncio.to_thread(reply_json, results, single=single)
    return Response(content, media_type="application/json")


@router.post(
    "/encode/multi", response_model=EncodeMultiOut,
    responses={**NOT_FOUND, **UNAVAILABLE, **UNAUTHORIZED, **BUSY},
    summary="Encode one text with several SAEs of one model, in one forward pass",
)  # fmt: skip
async def encode_multi(body: EncodeMulti, request: Request, _client: EncodeClientDep) -> Response:
    """The text's tokens once, then per SAE its per-token active features; the model runs once, up to the
    deepest layer any of the SAEs reads."""
    results = await encode_multi_service(
        request, list(body.saes), body.text, top_k=body.top_k, include_bos=body.include_bos
    )
    content = await asyncio.to_thread(multi_json, list(body.saes), results)
    return Response(content, media_type="application/json")
