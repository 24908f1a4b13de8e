"""Sparse linear algebra for training steps whose latents f are sparse (issue: the sparse step).

With L0 active latents out of d_sae per token, only the encoder's forward matmul must be dense:
decoding, the decoder-weight gradient and the encoder-weight gradient touch only the active
entries, at a cost that grows with B x L0 x d_in instead of B x d_sae x d_in. The active entries
of a (B, d_sae) matrix are held as a `Pattern`: row-major (row, column) pairs and the CSR row
offsets, built once per step and shared by the forward and backward passes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# CSR tensors are 'beta' in torch: the few operations used here are tested against dense ones.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


@dataclass(frozen=True)
class Pattern:
    """The active entries of a (B, d_sae) matrix, row-major."""

    rows: Tensor
    """(nnz,) int64 row of each entry (non-decreasing)."""
    cols: Tensor
    """(nnz,) int64 column of each entry (increasing within a row)."""
    offsets: Tensor
    """(B + 1,) int64: the entries of row r are offsets[r]:offsets[r + 1] (CSR crow_indices)."""
    shape: tuple[int, int]
    """(B, d_sae)."""

    @classmethod
    def of(cls, mask: Tensor) -> Pattern:
        """The True entries of a (B, d_sae) bool mask (one pass over the mask)."""
        rows, cols = mask.nonzero(as_tuple=True)  # row-major, so each row's columns ascend
        return cls._from_entries(rows, cols, (int(mask.shape[0]), int(mask.shape[1])))

    @classmethod
    def of_columns(cls, cols: Tensor, width: int) -> Pattern:
        """The entries cols[r, j] of a (B, width) matrix: cols (B, n) int64 holds n distinct columns
        per row, ascending within each row (e.g. sorted top-k indices); no pass over a (B, width) mask."""
        batch, n = int(cols.shape[0]), int(cols.shape[1])
        rows = torch.arange(batch, device=cols.device).repeat_interleave(n)  # (B * n,)
        offsets = torch.arange(batch + 1, device=cols.device) * n  # (B + 1,): every row holds n entries
        return cls(rows, cols.reshape(-1), offsets, (batch, width))

    def subset(self, keep: Tensor) -> Pattern:
        """The entries where `keep` (nnz,) bool is True, still row-major (no pass over a (B, d_sae) mask)."""
        return self._from_entries(self.rows[keep], self.cols[keep], self.shape)

    @classmethod
    def _from_entries(cls, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> Pattern:
        counts = torch.bincount(rows, minlength=shape[0])  # (B,): entries per row, from the nnz rows alone
        offsets = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls(rows, cols, offsets, shape)

    def csr(self, values: Tensor) -> Tensor:
        """(B, d_sae) sparse CSR matrix with these values at the pattern's entries."""
        return torch.sparse_csr_tensor(self.offsets, self.cols, values, self.shape, check_invariants=False)


def decode(pattern: Pattern, values: Tensor, weight: Tensor) -> Tensor:
    """(B, d_in) = F @ weight for the sparse F holding `values` (nnz,) at `pattern`; weight (d_sae, d_in)."""
    return F.embedding_bag(pattern.cols, weight, pattern.offsets[:-1], mode="sum", per_sample_weights=values)


def sampled_products(pattern: Pattern, left: Tensor, right: Tensor) -> Tensor:
    """(nnz,) the entries (left @ right.T)[r, c] at the pattern only: left (B, d), right (d_sae, d)."""
    zeros = pattern.csr(torch.zeros_like(pattern.rows, dtype=left.dtype))
    return torch.sparse.sampled_addmm(zeros, left, right.T).values()


def column_order(pattern: Pattern) -> tuple[Tensor, Tensor]:
    """The pattern's entries column by column: (order (nnz,) int64, a permutation of the entries that
    sorts them by column, stably; col_offsets (d_sae + 1,) int64, column c's entries are
    order[col_offsets[c]:col_offsets[c + 1]]). On a CPU numpy's stable argsort (a radix sort for 16-bit
    keys) is ~10x torch's here."""
    cols, width = pattern.cols, pattern.shape[1]
    if cols.device.type == "cpu":
        keys = cols.numpy().astype(np.uint16) if width <= 1 << 16 else cols.numpy()
        order = torch.from_numpy(np.argsort(keys, kind="stable").astype(np.int64))
    else:
        order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=width)  # (d_sae,)
    col_offsets = torch.zeros(width + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(counts, 0, out=col_offsets[1:])
    return order, col_offsets


def transposed_product(pattern: Pattern, values: Tensor, dense: Tensor, by_column: tuple[Tensor, Tensor]) -> Tensor:
    """(d_sae, d) = S.T @ dense for the sparse S (B, d_sae) holding `values` at `pattern`; dense (B, d);
    by_column = column_order(pattern). Row c of the result sums values * dense[row] over column c's
    entries: an embedding bag per column."""
    order, col_offsets = by_column
    return F.embedding_bag(
        pattern.rows[order], dense, col_offsets[:-1], mode="sum", per_sample_weights=values[order].to(dense.dtype)
    )


def weight_grads(
    pattern: Pattern, *, values: Tensor, grad_pre: Tensor, x: Tensor, grad_x_hat: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of pre = x @ W_enc + bias and x_hat = f @ W_dec for f (`values` at `pattern`)
    and dL/dpre (`grad_pre` at the same entries): (W_enc (d_in, d_sae), bias (d_sae,), W_dec (d_sae, d_in))."""
    by_column = column_order(pattern)  # one sort serves both products
    grad_w_dec = transposed_product(pattern, values, grad_x_hat, by_column)  # (d_sae, d_in)
    grad_w_enc = transposed_product(pattern, grad_pre, x, by_column).T  # (d_in, d_sae)
    grad_bias = torch.zeros(pattern.shape[1], dtype=grad_pre.dtype, device=grad_pre.device)
    grad_bias.index_add_(0, pattern.cols, grad_pre)  # (d_sae,)
    return grad_w_enc, grad_bias, grad_w_dec
