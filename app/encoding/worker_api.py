"""The encoder worker's HTTP API: what `jumpscope worker` serves to a web server in another process.

    POST /v1/encode   the target's fields + texts, top_k, features, include_bos
                      -> {"results": [TextEncoding, ...]}; 422 {"detail": msg} on bad input,
                      503 {"detail": msg} when the SAE or its model cannot be loaded
    GET  /healthz     -> {"status": "ok"}

`app.encoding.remote.RemoteEncoder` is the client. The request names an SAE folder and a model by path
and the worker loads them: serve it on localhost or a private network only, never publicly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding

if TYPE_CHECKING:
    from app.encoding.local import LocalEncoder


class EncodeRequest(BaseModel):
    """An SAETarget's fields plus the encode options."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    name: str = Field(description="SAE slug")
    path: str = Field(description="native SAE folder")
    model: str = Field(description="model name, hub id or local folder")
    layer: int
    site: str = Field(description="resid, mlp or attn")
    prepend_bos: bool = True
    texts: list[str]
    top_k: int | None = Field(default=None, description="keep at most this many active features per token")
    features: list[int] | None = Field(default=None, description="feature indices to return densely")
    include_bos: bool = True

    def target(self) -> SAETarget:
        return SAETarget(
            name=self.name,
            path=self.path,
            model=self.model,
            layer=self.layer,
            site=self.site,
            prepend_bos=self.prepend_bos,
        )


class TextEncodingOut(BaseModel):
    """One text's encoding (app.encoding.types.TextEncoding)."""

    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    activations: list[list[tuple[int, float]]] = Field(
        description="per token: active [feature index, value] pairs, highest first"
    )
    dense: dict[int, list[float]] | None = Field(default=None, description="feature index -> value per token")

    @classmethod
    def of(cls, enc: TextEncoding) -> TextEncodingOut:
        return cls(
            tokens=enc.tokens,
            token_ids=enc.token_ids,
            special=enc.special,
            activations=enc.activations,
            dense=enc.dense,
        )


class EncodeResponse(BaseModel):
    results: list[TextEncodingOut]


class Health(BaseModel):
    status: str


def create_worker_app(encoder: LocalEncoder) -> FastAPI:
    """A FastAPI app serving `encoder` (batching applies across concurrent HTTP requests)."""
    app = FastAPI(title="jumpscope encoder worker", version="1")

    @app.post(
        "/v1/encode",
        response_model=EncodeResponse,
        responses={422: {"description": "bad input"}, 503: {"description": "SAE or model not loadable"}},
    )
    async def encode(request: EncodeRequest) -> EncodeResponse:
        try:
            results = await encoder.encode(
                request.target(),
                request.texts,
                top_k=request.top_k,
                features=request.features,
                include_bos=request.include_bos,
            )
        except EncodeError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        except EncoderUnavailable as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        return EncodeResponse(results=[TextEncodingOut.of(enc) for enc in results])

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status=await encoder.health())

    return app
