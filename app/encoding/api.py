"""POST /api/v1/saes/{sae}/encode: text in, sparse per-token feature activations out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.catalog.saes import RegistryError, get_sae
from app.core.errors import INVALID, NOT_FOUND, UNAVAILABLE
from app.encoding.schemas import DenseValues, EncodeBatchOut, EncodeIn, EncodeOut, EncodeText, FeatureActivation

router = APIRouter(prefix="/api/v1/saes/{sae}", tags=["encode"], responses=INVALID)


TARGET_TTL = 5.0
"""Seconds an SAE's encode target (model, layer, site, weights path) is reused without asking the database."""


def _target(request: Request, sae: str) -> object:
    cache: dict[str, tuple[float, object]] = request.app.state.encode_targets
    hit = cache.get(sae)
    if hit is not None and time.monotonic() - hit[0] < TARGET_TTL:
        return hit[1]
    target = _lookup(request, sae)
    cache[sae] = (time.monotonic(), target)
    return target


def _lookup(request: Request, sae: str) -> object:
    from app.encoding.encoder import SAETarget

    with request.app.state.sessions() as session:
        row = get_sae(session, sae)
        if row.model is None or row.layer is None or row.site is None:
            raise RegistryError(f"SAE {sae!r} names no model, layer and site, so it cannot encode text")
        return SAETarget(name=row.name, path=row.path, model=row.model.name, layer=row.layer, site=row.site,
                         prepend_bos=row.prepend_bos)  # fmt: skip


def _out(result: object) -> EncodeOut:
    enc = result  # app.encoding.encoder.TextEncoding
    dense = getattr(enc, "dense", None)
    return EncodeOut(
        tokens=enc.tokens, token_ids=enc.token_ids, special=enc.special,  # type: ignore[attr-defined]
        activations=[[FeatureActivation(index=i, value=v) for i, v in token]
                     for token in enc.activations],  # type: ignore[attr-defined]
        features=[DenseValues(index=i, values=v) for i, v in dense.items()] if dense is not None else None,
    )  # fmt: skip


@router.post(
    "/encode", response_model=EncodeOut | EncodeBatchOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Encode text into the SAE's features",
)  # fmt: skip
async def encode(sae: str, body: EncodeIn, request: Request) -> EncodeOut | EncodeBatchOut:
    cached = request.app.state.encode_targets.get(sae)
    if cached is not None and time.monotonic() - cached[0] < TARGET_TTL:
        target = cached[1]
    else:
        target = await run_in_threadpool(_target, request, sae)
    texts = [body.text] if isinstance(body, EncodeText) else list(body.texts)
    results = await request.app.state.encoder.encode(
        target, texts, top_k=body.top_k, features=body.features, include_bos=body.include_bos
    )
    outs = [_out(r) for r in results]
    return outs[0] if isinstance(body, EncodeText) else EncodeBatchOut(results=outs)
