"""REST bodies of encoding text into SAE features."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import StrictBody

MAX_TEXTS = 16


MAX_TEXT_CHARS = 20_000

MAX_MULTI_SAES = 8
"""SAEs one text may be encoded with in one request (one forward pass for all of them)."""


class _EncodeOptions(StrictBody):
    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, description="Keep the k strongest features per token (at most d_sae).")
    features: list[int] | None = Field(
        None, min_length=1, max_length=256, description="Also return these features densely (indices < d_sae)."
    )
    include_bos: bool = True


class EncodeText(_EncodeOptions):
    """One text; the reply is one EncodeOut."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class EncodeTexts(_EncodeOptions):
    """Several texts; the reply holds one EncodeOut per text."""

    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        min_length=1, max_length=MAX_TEXTS
    )


EncodeIn = EncodeText | EncodeTexts


class FeatureActivation(BaseModel):
    index: int
    value: float


class DenseValues(BaseModel):
    index: int
    values: list[float]


class EncodeOut(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    activations: list[list[FeatureActivation]] = Field(description="Per token: active features, highest first.")
    features: list[DenseValues] | None = None


class EncodeBatchOut(BaseModel):
    results: list[EncodeOut]


class EncodeMulti(StrictBody):
    """One text and several SAEs of one model: one forward pass serves them all."""

    model_config = ConfigDict(extra="forbid")

    saes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_MULTI_SAES, description="Names of SAEs of one model (each once)."
    )
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    top_k: int | None = Field(None, ge=1, description="Keep the k strongest features per token (at most d_sae).")
    include_bos: bool = True


class SAEActivations(BaseModel):
    sae: str
    activations: list[list[FeatureActivation]] = Field(description="Per token: active features, highest first.")


class EncodeMultiOut(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    results: list[SAEActivations] = Field(description="One per SAE, in the order asked.")
