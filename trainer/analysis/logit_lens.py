"""Decoder-direction views of SAE features: the logit lens and the nearest features.

`output_tokens` projects each feature's decoder row onto the unembedding (W_dec @ W_U.T, the direct effect of
the feature on the logits, ignoring the final norm) and keeps the k most promoted and k most suppressed tokens.
`similar_features` ranks the other features by decoder cosine similarity. Both work in chunks of features so
the full (F, V) or (F, F) product never exists: for F = 65,536 and V = 262,144 it would take 64 GiB in float32;
a chunk's product stays under `max_bytes` (256 MiB by default: 256 features at V = 262,144 in float32).
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_MAX_BYTES = 256 * 2**20
"""Default budget of one chunk's product (bytes)."""


def _chunk_rows(chunk: int | None, row_bytes: int, max_bytes: int) -> int:
    """Rows per chunk: `chunk` if given, else as many rows of `row_bytes` as fit in `max_bytes` (at least 1)."""
    if chunk is not None:
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        return chunk
    return max(1, max_bytes // row_bytes)


@torch.no_grad()
def output_tokens(
    W_dec: Tensor, W_U: Tensor, *, k: int = 10, chunk: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k promoted and suppressed tokens of each feature's decoder direction.

    W_dec (F, d) decoder rows, W_U (V, d) unembedding. Computed in the promoted dtype of the two inputs on their
    device, `chunk` features at a time (default: as many as keep a chunk's (chunk, V) logits under
    `max_bytes`). Returns top_ids (F, k) int64 and top_vals (F, k) float32, descending (largest logits first),
    and bottom_ids, bottom_vals (F, k), ascending (most negative logits first).
    """
    if W_dec.dim() != 2 or W_U.dim() != 2 or W_dec.shape[1] != W_U.shape[1]:
        raise ValueError(f"W_dec must be (F, d) and W_U (V, d), got {tuple(W_dec.shape)} and {tuple(W_U.shape)}")
    F, V = W_dec.shape[0], W_U.shape[0]
    if not 1 <= k <= V:
        raise ValueError(f"k must be between 1 and the vocabulary size V={V}, got k={k}")
    dtype = torch.promote_types(W_dec.dtype, W_U.dtype)
    W_U = W_U.to(dtype)
    step = _chunk_rows(chunk, V * W_U.element_size(), max_bytes)
    top_ids = torch.empty(F, k, dtype=torch.int64, device=W_dec.device)
    top_vals = torch.empty(F, k, dtype=torch.float32, device=W_dec.device)
    bottom_ids = torch.empty_like(top_ids)
    bottom_vals = torch.empty_like(top_vals)
    for i in range(0, F, step):
        logits = W_dec[i : i + step].to(dtype) @ W_U.T  # (c, V)
        vals, ids = logits.topk(k, dim=1)  # (c, k)
        top_vals[i : i + step], top_ids[i : i + step] = vals, ids
        vals, ids = logits.topk(k, dim=1, largest=False)  # (c, k)
        bottom_vals[i : i + step], bottom_ids[i : i + step] = vals, ids
    return top_ids, top_vals, bottom_ids, bottom_vals


@torch.no_grad()
def similar_features(
    W_dec: Tensor, k: int = 10, chunk: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Tensor, Tensor]:
    """The k other features with the most similar decoder direction, by cosine similarity.

    W_dec (F, d). A feature is never its own neighbour; an all-zero decoder row has cosine 0 with everything.
    Computed in float32, `chunk` features at a time (default: as many as keep a chunk's (chunk, F) cosines
    under `max_bytes`). Returns ids (F, k) int64 and cosines (F, k) float32, descending.
    """
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be (F, d), got {tuple(W_dec.shape)}")
    F = W_dec.shape[0]
    if not 1 <= k <= F - 1:
        raise ValueError(f"k must be between 1 and F - 1 = {F - 1} (the other features), got k={k}")
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)  # (F, d); zero rows stay zero
    step = _chunk_rows(chunk, F * unit.element_size(), max_bytes)
    ids = torch.empty(F, k, dtype=torch.int64, device=W_dec.device)
    cosines = torch.empty(F, k, dtype=torch.float32, device=W_dec.device)
    for i in range(0, F, step):
        cos = unit[i : i + step] @ unit.T  # (c, F)
        rows = torch.arange(cos.shape[0], device=cos.device)
        cos[rows, rows + i] = -torch.inf  # not itself
        cosines[i : i + step], ids[i : i + step] = cos.topk(k, dim=1)
    return ids, cosines
