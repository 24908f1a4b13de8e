"""Token text for display: every token id's decoded string, stored once per model.

The web pages render examples from token ids without loading the tokenizer, so the indexer
stores the model's vocabulary (gzip'd JSON list) on its `models` row.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, select

from app.core.tables import Model


def token_strings(tokenizer: Any) -> list[str]:
    """The decoded text of every token id, in id order (special tokens as their literal text).

    A fast tokenizer that does no clean-up of the decoded text decodes in its Rust backend, in one
    parallel call (~6x `batch_decode` for Gemma's 262k tokens, the same strings); any other goes
    through `batch_decode`."""
    ids = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and backend is not None and not tokenizer.clean_up_tokenization_spaces:
        return list(backend.decode_batch(ids, skip_special_tokens=False))
    return list(tokenizer.batch_decode(ids, skip_special_tokens=False))


def pack(strings: list[str]) -> bytes:
    return gzip.compress(json.dumps(strings, ensure_ascii=False).encode(), compresslevel=6)


def unpack(blob: bytes) -> list[str]:
    return list(json.loads(gzip.decompress(blob)))


@lru_cache(maxsize=8)
def _cached(url: str, model_id: int, created: str) -> tuple[str, ...]:
    from app.core.database import engine_for

    with engine_for(url).connect() as conn:
        blob = conn.scalar(select(Model.vocab).where(Model.id == model_id))
    return tuple(unpack(blob)) if blob else ()


def vocab_for(engine: Engine, model: Model) -> tuple[str, ...]:
    """The model's token strings (empty if never indexed), cached per process."""
    return _cached(engine.url.render_as_string(hide_password=False), model.id, str(model.created_at))


def decode(vocab: tuple[str, ...] | list[str], token_id: int) -> str:
    """One token's text; ids outside the stored vocabulary show as <id>."""
    return vocab[token_id] if 0 <= token_id < len(vocab) else f"<{token_id}>"
