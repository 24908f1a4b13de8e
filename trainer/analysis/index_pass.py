"""The indexer's single streaming pass: text -> model -> SAE -> per-feature statistics.

Packed sequences of a dataset run through the model (stopped after the SAE's layer) and the
SAE's encoder, and every batch of feature activations (B, S, d_sae) updates one
`FeatureStats` for all features at once. Afterwards the decoder gives each feature's output
tokens (logit lens) and its most similar features. No database here: the caller stores the
result (app.features.indexer).

`run_cached_index_pass` does the same from a harvest's activation cache with no model forward
pass (the model only lends its unembedding to the logit lens): the packed sequences are rebuilt
from the cache's token rows (trainer.data.sequences) and go through the SAE and the statistics in
the same batches, so the same tokens give the same index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainer.analysis.feature_stats import FeatureStats, FeatureStatsResult, StatsConfig
from trainer.analysis.logit_lens import output_tokens, similar_features
from trainer.data.activations import ShardSource
from trainer.data.documents import recording
from trainer.data.sequences import cached_batches
from trainer.data.text import batch_sequences, iter_documents, pack_tokens
from trainer.lm.models import LoadedModel
from trainer.lm.sites import check_site, harvest
from trainer.saes.base import SAE


@dataclass
class IndexPassConfig:
    """What to stream and what to keep."""

    tokens: int = 1_000_000
    """Non-special tokens to stream (the pass stops at the first batch boundary past this)."""
    dataset: str | None = None
    """HF dataset name or local file/folder; None = the packaged corpus."""
    text_column: str = "text"
    """The dataset column holding the text."""
    split: str = "train"
    """Dataset split."""
    context_size: int = 128
    """Tokens per packed sequence, BOS included."""
    batch_sequences: int = 8
    """Sequences per forward pass."""
    stats: StatsConfig = field(default_factory=StatsConfig)
    """Top-K, window, bands, histogram bins, seed."""
    output_tokens: int = 10
    """Top positive and negative output tokens per feature."""
    similar: int = 10
    """Most similar features by decoder cosine."""


@dataclass
class IndexPassResult:
    stats: FeatureStatsResult
    documents: list[str]
    """Document ids, indexed by the doc ids in `stats`."""
    top_token_ids: Tensor
    """(F, k) output tokens with the largest decoder-row x unembedding logits."""
    top_token_values: Tensor
    bottom_token_ids: Tensor
    """(F, k) the most negative ones."""
    bottom_token_values: Tensor
    similar_ids: Tensor
    """(F, k) most similar other features by decoder cosine."""
    similar_cosines: Tensor
    seconds: float
    """Wall time of the streaming part (model + SAE + statistics)."""


def unembedding(model: Any) -> Tensor:
    """(V, d_model) output embedding of a causal LM."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no output embedding to compute output tokens with")
    return head.weight.detach()


def _check_tokens(cfg: IndexPassConfig) -> None:
    if cfg.tokens < 1:
        raise ValueError(f"tokens must be at least 1, got {cfg.tokens}")


def run_index_pass(
    lm: LoadedModel,
    sae: SAE,
    *,
    layer: int,
    site: str,
    cfg: IndexPassConfig,
    on_batch: Callable[[int], None] | None = None,
) -> IndexPassResult:
    """Stream cfg.tokens tokens through model and SAE; on_batch(tokens_so_far) after each batch."""
    check_site(lm.model, layer, site)
    _check_tokens(cfg)
    device = next(lm.model.parameters()).device
    documents: list[str] = []
    docs = recording(iter_documents(cfg.dataset, text_column=cfg.text_column, split=cfg.split), documents)
    packed = batch_sequences(pack_tokens(docs, lm.tokenizer, cfg.context_size), cfg.batch_sequences)

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        for batch in packed:
            ids = batch.input_ids.to(device)  # (B, S)
            acts = harvest(lm.model, ids, batch.attention_mask.to(device), layer, site)  # (B, S, d_in)
            yield acts, ids, batch.doc_index.to(device), batch.special.to(device)

    return _index(lm, sae, batches(), documents, layer=layer, site=site, cfg=cfg, device=device, on_batch=on_batch)


def run_cached_index_pass(
    lm: LoadedModel,
    sae: SAE,
    shards: ShardSource,
    *,
    layer: int,
    site: str,
    cfg: IndexPassConfig,
    on_batch: Callable[[int], None] | None = None,
) -> IndexPassResult:
    """`run_index_pass` over a harvest's cache instead of the model's forward pass.

    The cache's own context size, dataset and split apply (cfg's are ignored); it must hold token
    rows (trainer.data.sequences) of the SAE's width. lm is not run, only its unembedding read.
    """
    check_site(lm.model, layer, site)
    _check_tokens(cfg)
    if shards.d_in != sae.cfg.d_in:
        raise ValueError(
            f"d_in mismatch: the cache's activations are {shards.d_in} wide, the SAE expects {sae.cfg.d_in}"
        )
    device = next(lm.model.parameters()).device
    documents = shards.documents()

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        for batch in cached_batches(shards, cfg.batch_sequences):
            yield (batch.activations.to(device), batch.input_ids.to(device), batch.doc_index.to(device),
                   batch.special.to(device))  # fmt: skip

    return _index(lm, sae, batches(), documents, layer=layer, site=site, cfg=cfg, device=device, on_batch=on_batch)


def _index(
    lm: LoadedModel,
    sae: SAE,
    batches: Iterator[tuple[Tensor, Tensor, Tensor, Tensor]],
    documents: list[str],
    *,
    layer: int,
    site: str,
    cfg: IndexPassConfig,
    device: torch.device,
    on_batch: Callable[[int], None] | None,
) -> IndexPassResult:
    """Statistics over (acts (B, S, d_in), token ids, doc ids, special) batches until cfg.tokens, then
    the decoder's output tokens and similar features."""
    sae = sae.to(device).eval()
    stats = FeatureStats(sae.cfg.d_sae, cfg.stats, device)
    start = time.perf_counter()
    seen = 0
    with torch.no_grad():
        for acts, ids, doc_index, special in batches:
            b, s, d = acts.shape
            f = sae.encode(acts.reshape(b * s, d).float()).view(b, s, -1)  # (B, S, F)
            stats.update(f, ids, doc_index, special)
            seen += int((~special).sum())
            if on_batch is not None:
                on_batch(seen)
            if seen >= cfg.tokens:
                break
    seconds = time.perf_counter() - start
    if seen == 0:
        raise ValueError("the dataset gave no tokens to index")
    result = stats.result()
    w_dec = sae.W_dec.detach().float()  # (F, d_in)
    w_u = unembedding(lm.model).float().to(w_dec.device)  # (V, d_model)
    top_ids, top_vals, bottom_ids, bottom_vals = output_tokens(
        residual_directions(lm, w_dec, layer, site), w_u, k=cfg.output_tokens
    )
    sim_ids, sim_cos = similar_features(w_dec, k=min(cfg.similar, sae.cfg.d_sae - 1))
    return IndexPassResult(
        result, documents, top_ids.cpu(), top_vals.cpu(), bottom_ids.cpu(), bottom_vals.cpu(),
        sim_ids.cpu(), sim_cos.cpu(), seconds,
    )  # fmt: skip


def residual_directions(lm: LoadedModel, w_dec: Tensor, layer: int, site: str) -> Tensor:
    """(F, d_model): each decoder row as a residual-stream direction.

    resid and mlp rows already live in the residual stream; attn rows are the concatenated
    head outputs before o_proj, so they go through that layer's o_proj first.
    """
    if site != "attn":
        return w_dec
    from trainer.lm.layers import decoder_layers

    attention: Any = decoder_layers(lm.model)[layer].self_attn
    o_proj = attention.o_proj.weight.detach().float()  # (d_model, d_attn)
    return w_dec @ o_proj.T.to(w_dec.device)  # (F, d_model)
