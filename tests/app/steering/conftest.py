"""Fixtures of the steering tests: the tiny model next to the shared store's 'tiny' SAE, and helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.lm.models import LoadedModel, load_model

PROMPT = "The quick brown fox jumps over the lazy dog. Sparse is better than"
STEER = "/api/v1/saes/tiny/steer"


def ablate_url(feature: int | str) -> str:
    return f"/api/v1/saes/tiny/features/{feature}/ablate"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir: Path) -> LoadedModel:
    """The model the 'tiny' SAE is registered on, loaded here for reference computations."""
    return load_model(str(tiny_model_dir))


def lens_feature(lm: LoadedModel, sae: Any) -> tuple[int, int]:
    """(feature, token): the feature whose logit lens (W_dec[f] @ W_U) has the widest top-1 margin, and that token."""
    W_U = lm.model.get_output_embeddings().weight  # (V, d_model)
    top = (sae.W_dec.detach().float() @ W_U.float().T).topk(2, dim=1)  # (d_sae, 2)
    feature = int((top.values[:, 0] - top.values[:, 1]).argmax())
    return feature, int(top.indices[feature, 0])


def prompt_ids(lm: LoadedModel, text: str = PROMPT) -> list[int]:
    """Token ids as the encoder makes them for an SAE trained with BOS."""
    return [lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False).input_ids]


def plain_greedy(lm: LoadedModel, text: str, n: int) -> list[int]:
    """The model's own greedy continuation (model.generate, no hooks), cut after an EOS."""
    ids = prompt_ids(lm, text)
    out = lm.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids) :].tolist()
    eos = lm.tokenizer.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out
