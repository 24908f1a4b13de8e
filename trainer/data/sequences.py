"""Packed sequences rebuilt from a harvest's token rows, so an SAE can be indexed with no model pass.

A harvest (trainer.lm.source.TokenRowHarvest) keeps, for every activation row, its token id,
document, packed sequence and position; special tokens have no rows. `cached_batches` puts the
rows back into (B, S) batches of packed sequences exactly as the live pass builds them
(trainer.data.text.pack_tokens): BOS at position 0, the separator (EOS) after each document's
last token, carrying that document's index, and the pad token from `pad_from` on in the last
sequence; their activations are zeros (every statistic ignores special positions). Only the
sequences the cache holds completely are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.data.activations import ActivationError, ShardSource, TokenRows

REQUIRED_META = ("context_size", "special_tokens", "sequences")
"""The meta.json fields a cache needs for its sequences to be rebuilt."""


@dataclass
class CachedBatch:
    """B packed sequences of S tokens, like trainer.data.text.PackedBatch plus the activations."""

    activations: Tensor
    """(B, S, d_in) float32; zeros at special positions."""
    input_ids: Tensor
    """(B, S) int64."""
    doc_index: Tensor
    """(B, S) int64 document of each token (an EOS belongs to the document it ends; -1 at BOS and pad)."""
    special: Tensor
    """(B, S) bool: BOS, EOS and pad."""


@dataclass(frozen=True)
class _Layout:
    context: int
    prepend_bos: bool
    bos: int | None
    separator: int
    pad: int
    sequences: int
    pad_from: tuple[int, int] | None


def _layout(shards: ShardSource) -> _Layout:
    meta = shards.meta
    missing = [name for name in REQUIRED_META if meta.get(name) is None]
    if not shards.token_rows or missing:
        raise ActivationError(
            f"{shards.folder} is not a harvest with token rows (missing: "
            f"{', '.join(missing) or 'token_ids, doc_ids, seq_ids, positions'}); harvest it again with "
            "`jumpscope cache`, or index with the model"
        )
    ids = meta["special_tokens"]
    pad_from = meta.get("pad_from")
    return _Layout(
        context=int(meta["context_size"]), prepend_bos=bool(meta.get("prepend_bos", True)),
        bos=ids.get("bos"), separator=int(ids["separator"]), pad=int(ids["pad"]), sequences=int(meta["sequences"]),
        pad_from=(int(pad_from[0]), int(pad_from[1])) if pad_from else None,
    )  # fmt: skip


def cached_batches(shards: ShardSource, batch_sequences: int) -> Iterator[CachedBatch]:
    """The cache's complete packed sequences, `batch_sequences` at a time (a short last batch)."""
    if batch_sequences < 1:
        raise ValueError(f"batch_sequences must be at least 1, got {batch_sequences}")
    layout = _layout(shards)
    buffer: TokenRows | None = None  # rows not yet yielded, in order
    first = 0  # the first sequence not yet yielded
    carry = torch.full((1,), -1, dtype=torch.int64)  # document of the last real token yielded
    for rows in shards.rows():
        buffer = rows if buffer is None else _cat(buffer, rows)
        # Sequences below the last row's are complete in the buffer (rows come in order).
        while first + batch_sequences <= min(int(rows.seq_ids[-1]), layout.sequences):
            batch, buffer = _split(buffer, first + batch_sequences)
            yield _build(batch, first, batch_sequences, layout, carry)
            first += batch_sequences
    while buffer is not None and first < layout.sequences:
        n = min(batch_sequences, layout.sequences - first)
        batch, buffer = _split(buffer, first + n)
        yield _build(batch, first, n, layout, carry)
        first += n


def _cat(a: TokenRows, b: TokenRows) -> TokenRows:
    ta, tb = a.tensors(), b.tensors()
    return TokenRows.from_tensors({name: torch.cat([ta[name], tb[name]]) for name in ta})


def _split(rows: TokenRows, stop: int) -> tuple[TokenRows, TokenRows]:
    """The rows of sequences before `stop`, and the rest (views, no copies)."""
    cut = int(torch.searchsorted(rows.seq_ids, torch.tensor([stop]))[0])
    tensors = rows.tensors()
    return (TokenRows.from_tensors({name: t[:cut] for name, t in tensors.items()}),
            TokenRows.from_tensors({name: t[cut:] for name, t in tensors.items()}))  # fmt: skip


def _build(rows: TokenRows, first: int, n: int, layout: _Layout, carry: Tensor) -> CachedBatch:
    S = layout.context
    local = rows.seq_ids - first  # (r,) sequence within the batch
    pos = rows.positions  # (r,)
    if len(rows) and (int(pos.max()) >= S or int(pos.min()) < 0):
        raise ActivationError(f"token rows with positions outside 0..{S - 1}: the cache's context_size is wrong")
    input_ids = torch.full((n, S), layout.separator, dtype=torch.int64)
    if layout.prepend_bos and layout.bos is not None:
        input_ids[:, 0] = layout.bos
    pad = torch.zeros(n, S, dtype=torch.bool)
    if layout.pad_from is not None and first <= layout.pad_from[0] < first + n:
        pad[layout.pad_from[0] - first, layout.pad_from[1] :] = True
        input_ids[pad] = layout.pad
    special = torch.ones(n, S, dtype=torch.bool)
    special[local, pos] = False
    input_ids[local, pos] = rows.token_ids
    doc = torch.full((n, S), -1, dtype=torch.int64)
    doc[local, pos] = rows.doc_ids
    # A separator belongs to the document it ends: the last real token's before it, in stream order.
    flat_real = ~special.view(-1)  # (n * S,)
    order = torch.arange(n * S)
    last = torch.where(flat_real, order, -1).cummax(0).values  # (n * S,) index of the last real token so far
    filled = torch.where(last >= 0, doc.view(-1)[last.clamp(min=0)], carry)  # (n * S,)
    separator = special & ~pad
    if layout.prepend_bos:
        separator[:, 0] = False
    doc[separator] = filled.view(n, S)[separator]
    if bool(flat_real.any()):
        carry.copy_(doc.view(-1)[last[-1]])
    acts = torch.zeros(n, S, rows.activations.shape[1], dtype=torch.float32)
    acts[local, pos] = rows.activations.float()
    return CachedBatch(acts, input_ids, doc, special)
