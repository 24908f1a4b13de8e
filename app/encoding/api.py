"""POST /api/v1/saes/{sae}/encode: text in, sparse per-token feature activations out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.core.errors import INVALID, NOT_FOUND, UNAVAILABLE
from app.encoding.schemas import DenseValues, EncodeBatchOut, EncodeIn, EncodeOut, EncodeText, FeatureActivation
from app.encoding.targets import TARGET_TTL, encode_target
from app.encoding.types import Encoder, SAETarget, TextEncoding

router = APIRouter(prefix="/api/v1/saes/{sae}", tags=["encode"], responses=INVALID)


def _out(enc: TextEncoding) -> EncodeOut:
    return EncodeOut(
        tokens=enc.tokens, token_ids=enc.token_ids, special=enc.special,
        activations=[[FeatureActivation(index=i, value=v) for i, v in token] for token in enc.activations],
        features=[DenseValues(index=i, values=v) for i, v in enc.dense.items()] if enc.dense is not None else None,
    )  # fmt: skip


@router.post(
    "/encode", response_model=EncodeOut | EncodeBatchOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Encode text into the SAE's features",
)  # fmt: skip
async def encode(sae: str, body: EncodeIn, request: Request) -> EncodeOut | EncodeBatchOut:
    cached: tuple[float, SAETarget] | None = request.app.state.encode_targets.get(sae)
    if cached is not None and time.monotonic() - cached[0] < TARGET_TTL:
        target = cached[1]
    else:
        target = await run_in_threadpool(encode_target, request, sae)
    texts = [body.text] if isinstance(body, EncodeText) else list(body.texts)
    encoder: Encoder = request.app.state.encoder
    results = await encoder.encode(
        target, texts, top_k=body.top_k, features=body.features, include_bos=body.include_bos
    )
    outs = [_out(r) for r in results]
    return outs[0] if isinstance(body, EncodeText) else EncodeBatchOut(results=outs)
