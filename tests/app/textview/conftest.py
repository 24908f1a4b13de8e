"""The text pages' store: the shared indexed 'tiny' (layer 1 resid) plus SAEs of the same tiny model at
other sites, and one of another model, all registered in the same real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.catalog.saes import import_sae
from app.core.database import session_scope
from tests.app.conftest import random_jumprelu
from trainer.formats.native import SAEMetadata, save_native

EXTRA = [("tiny-l0", 0, "resid", 64), ("tiny-attn", 1, "attn", 128)]
"""(name, layer, site, d_in): more SAEs on the tiny model, not indexed."""
FOREIGN = "other-model-sae"
"""An SAE of another model (never encoded: it cannot share the tiny model's forward pass)."""


def register_extra(shared_index: Any, tiny_model_dir: Path) -> None:
    """Register EXTRA and FOREIGN in the shared store (idempotent per module: the store is module-scoped)."""
    _, engine, _, folder = shared_index
    with session_scope(engine) as session:
        for seed, (name, layer, site, d_in) in enumerate(EXTRA, start=3):
            src = folder / f"src-{name}"
            save_native(src, random_jumprelu(d_in, seed=seed),
                        SAEMetadata(model=str(tiny_model_dir), layer=layer, site=site))  # fmt: skip
            import_sae(session, src, data_dir=folder / "data", name=name)
        src = folder / f"src-{FOREIGN}"
        save_native(src, random_jumprelu(64, seed=7), SAEMetadata(model="elsewhere/some-model", layer=1, site="resid"))
        import_sae(session, src, data_dir=folder / "data", name=FOREIGN)


@pytest.fixture(scope="module")
def text_store(shared_index: Any, tiny_model_dir: Path) -> Any:
    """shared_index with EXTRA and FOREIGN registered too."""
    register_extra(shared_index, tiny_model_dir)
    return shared_index
