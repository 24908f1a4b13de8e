"""What every encoder takes and gives: the target SAE, the result of one text, the two errors, and
the `Encoder` interface that `LocalEncoder` (app.encoding.local) and `RemoteEncoder`
(app.encoding.remote) share.

Torch-free, so that the web process can name these types without importing a model.

Errors: `EncodeError` is bad input (the API answers 422 with its message); `EncoderUnavailable`
means the request was fine but cannot be served (503): no worker reachable, or the registered SAE
or its model cannot be loaded. A missing or unreadable SAE folder is the latter: the folder comes
from the database, not from the user, and the same request succeeds once the folder is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.core.errors import InvalidInput, Unavailable


@dataclass(frozen=True)
class SAETarget:
    """What the encoder needs about a registered SAE (the web layer builds it from the DB row)."""

    name: str
    """SAE slug."""
    path: str
    """Native SAE folder (trainer.formats.native.load_native)."""
    model: str
    """Model name for trainer.lm.models.load_model ('gemma3-270m', 'tiny-gemma2', a hub id or a local folder)."""
    layer: int
    site: str
    """resid, mlp or attn."""
    prepend_bos: bool = True
    """Whether the SAE was trained on sequences that start with BOS."""


class EncodeError(InvalidInput):
    """Bad input (empty text, too many tokens, top_k or feature index out of range): HTTP 422."""


class EncoderUnavailable(Unavailable):
    """The encoder cannot serve the request (worker down, SAE or model not loadable): HTTP 503."""


@dataclass
class TextEncoding:
    """The encoding of one text."""

    tokens: list[str]
    """Decoded text of each token (tokenizer.decode([id]))."""
    token_ids: list[int]
    special: list[bool]
    """True for BOS/EOS/pad/unk and other special tokens."""
    activations: list[list[tuple[int, float]]]
    """Per token: the active (feature index, value) pairs, highest first, cut to top_k if given."""
    dense: dict[int, list[float]] | None = None
    """When `features` was given: feature index -> its value at every token."""


class Encoder(Protocol):
    """Text -> model -> SAE -> per-token features; in this process or through a worker."""

    async def encode(
        self,
        target: SAETarget,
        texts: list[str],
        *,
        top_k: int | None = None,
        features: list[int] | None = None,
        include_bos: bool = True,
    ) -> list[TextEncoding]:
        """Encode each text with the target SAE: one TextEncoding per text, in order."""
        ...

    async def encode_multi(
        self, targets: list[SAETarget], text: str, *, top_k: int | None = None, include_bos: bool = True
    ) -> list[TextEncoding]:
        """Encode one text with several SAEs of one model, in one forward pass: one TextEncoding per target."""
        ...

    async def health(self) -> str:
        """'ok' when it can serve, else 'unavailable'."""
        ...
