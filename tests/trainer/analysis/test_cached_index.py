"""Indexing from a harvest's cache gives the same index as the live pass over the same tokens (issue 15).

A real (tiny, random) Gemma 2 harvests fp32 token-row shards of the packaged corpus; an SAE is indexed
once through the model (run_index_pass) and once from the shards with no forward pass
(run_cached_index_pass); every statistic must agree: counts, sums, maxima, histograms, top-K and
band examples with their windows, the held-out examples and the context reservoir (issue 18),
output tokens, similar features.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from app.pipeline.stages import lm_source, write_activation_cache
from tests.conftest import tiny_sae_cfg
from trainer.analysis.feature_stats import StatsConfig
from trainer.analysis.index_pass import IndexPassConfig, IndexPassResult, run_cached_index_pass, run_index_pass
from trainer.data.activations import DOCUMENTS_FILE, ActivationError, ShardSource, write_shards
from trainer.data.sequences import cached_batches
from trainer.data.text import batch_sequences, iter_documents, pack_tokens
from trainer.saes.registry import build_sae

CONTEXT = 24
BATCH = 4


def _sae(d_in: int) -> torch.nn.Module:
    torch.manual_seed(3)
    sae = build_sae(tiny_sae_cfg(d_in=d_in, d_sae=48, threshold_init=0.05))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.1)
    return sae


def _harvest(model_dir: Path, out: Path, tokens: int | None, *, dataset: str | None = None, split: str = "train",
             shard_tokens: int = 700) -> Path:  # fmt: skip
    lm = lm_source(model=str(model_dir), layer=1, site="resid", context_size=CONTEXT, model_batch=BATCH,
                   device="cpu", max_tokens=tokens, dataset=dataset, split=split)  # fmt: skip
    write_activation_cache(lm, out, shard_tokens=shard_tokens)
    return out


def _small_dataset(folder: Path) -> str:
    """A local JSON-lines dataset of 40 documents of varied length (about 3,000 tiny-Gemma tokens)."""
    path = folder / "docs.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]
    lines = [json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(3 + (i * 13) % 60))})
             for i in range(40)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _assert_same(live: IndexPassResult, cached: IndexPassResult) -> None:
    assert cached.documents[: len(live.documents)] == live.documents[: len(cached.documents)]
    for field in dataclasses.fields(live.stats):
        a, b = getattr(live.stats, field.name), getattr(cached.stats, field.name)
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, f=field.name: f"{f}: {m}")
        else:
            assert a == b, field.name
    for name in ("top_token_ids", "bottom_token_ids", "similar_ids"):
        assert torch.equal(getattr(live, name), getattr(cached, name)), name


@pytest.mark.parametrize("whole", [False, True], ids=["part-of-a-larger-cache", "the-whole-dataset"])
def test_cached_index_equals_the_live_pass(tiny_model_dir: Path, tmp_path: Path, whole: bool) -> None:
    """A cache larger than what is indexed, and a whole dataset (the padded last sequence included)."""
    dataset, split = (_small_dataset(tmp_path), "all") if whole else (None, "train")
    tokens = 10**6 if whole else 900
    acts = _harvest(tiny_model_dir, tmp_path / "acts", None if whole else 10_000, dataset=dataset, split=split)
    shards = ShardSource(acts)
    assert shards.token_rows
    meta = json.loads((acts / "meta.json").read_text())
    cfg = IndexPassConfig(tokens=tokens, dataset=dataset, split=split, context_size=CONTEXT, batch_sequences=BATCH,
                          stats=StatsConfig(top_k=3, window=8, n_bands=2, band_size=2, n_bins=6, heldout_top=3,
                                            heldout_band=2, contexts=16))  # fmt: skip
    lm = lm_source(model=str(tiny_model_dir), layer=1, context_size=CONTEXT, device="cpu").loaded
    sae = _sae(shards.d_in)
    live = run_index_pass(lm, sae, layer=1, site="resid", cfg=cfg)
    cached = run_cached_index_pass(lm, sae, shards, layer=1, site="resid", cfg=cfg)
    assert live.stats.tokens_seen == cached.stats.tokens_seen >= min(tokens, 900)
    assert int(live.stats.fire_count.sum()) > 0
    assert int((live.stats.top_seq >= 0).sum()) > 0 and int((live.stats.band_seq >= 0).sum()) > 0
    # the held-out examples and the context reservoir too (compared field by field in _assert_same)
    assert int((live.stats.heldout_band_seq >= 0).sum()) > 0
    assert int((live.stats.context_seq >= 0).sum()) == cfg.stats.contexts and live.stats.context_fired.any()
    if whole:
        assert meta["pad_from"] is not None  # the data ran out: the last sequence is padded
        assert live.stats.n_sequences == meta["sequences"]
        assert live.stats.tokens_seen == meta["n_tokens"]
        assert int((live.stats.heldout_top_seq >= 0).sum()) > 0  # 40 documents: top examples past the shown 3
    _assert_same(live, cached)


def test_cached_sequences_are_the_packed_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Token ids, documents and special marks of the rebuilt batches equal pack_tokens' (specials included)."""
    dataset = _small_dataset(tmp_path)
    acts = _harvest(tiny_model_dir, tmp_path / "acts", None, dataset=dataset, split="all", shard_tokens=333)
    shards = ShardSource(acts)
    lm = lm_source(model=str(tiny_model_dir), layer=1, context_size=CONTEXT, device="cpu").loaded
    docs = iter_documents(dataset, split="all")
    packed = list(batch_sequences(pack_tokens(docs, lm.tokenizer, CONTEXT), 3))
    rebuilt = list(cached_batches(shards, 3))
    assert len(rebuilt) == len(packed)
    for a, b in zip(packed, rebuilt, strict=True):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.special, b.special)
        assert torch.equal(a.doc_index, b.doc_index)
        assert b.activations[b.special].abs().sum() == 0
    documents = json.loads((acts / DOCUMENTS_FILE).read_text())
    assert len(documents) >= int(torch.cat([b.doc_index for b in packed]).max()) + 1


def test_a_truncated_harvest_keeps_only_its_complete_sequences(tiny_model_dir: Path, tmp_path: Path) -> None:
    acts = _harvest(tiny_model_dir, tmp_path / "acts", 1_000)  # 1,000 is not a multiple of the sequence
    shards = ShardSource(acts)
    meta = shards.meta
    assert meta["n_tokens"] == 1_000 and meta["pad_from"] is None
    rows = torch.cat([r.seq_ids for r in shards.rows()])
    assert meta["sequences"] == int(rows.max())  # the last one is cut short
    rebuilt = list(cached_batches(shards, BATCH))
    assert sum(b.input_ids.shape[0] for b in rebuilt) == meta["sequences"]


def test_caches_without_token_rows_are_refused_clearly(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    write_shards(folder, [torch.randn(50, 16)], {"model": "x", "context_size": CONTEXT})
    shards = ShardSource(folder)
    assert not shards.token_rows
    with pytest.raises(ActivationError, match="token rows"):
        next(cached_batches(shards, 2))
    lm = lm_source(model=str(tiny_model_dir), layer=1, context_size=CONTEXT, device="cpu").loaded
    with pytest.raises(ActivationError, match="harvest"):
        run_cached_index_pass(lm, _sae(16), shards, layer=1, site="resid", cfg=IndexPassConfig(tokens=10))
