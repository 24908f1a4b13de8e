"""Chunked logit lens and decoder similarity against a direct full product."""

from __future__ import annotations

import pytest
import torch

from trainer.analysis.logit_lens import output_tokens, similar_features

F, D, V = 50, 16, 300


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(F, D, generator=g), torch.randn(V, D, generator=g)


@pytest.mark.parametrize("chunk", [None, 1, 7, 13, 50, 64])
def test_output_tokens_match_full_product(weights: tuple[torch.Tensor, torch.Tensor], chunk: int | None) -> None:
    W_dec, W_U = weights
    logits = W_dec @ W_U.T  # (F, V)
    top_ids, top_vals, bottom_ids, bottom_vals = output_tokens(W_dec, W_U, k=10, chunk=chunk)
    ref_top = logits.topk(10, dim=1)
    ref_bottom = logits.topk(10, dim=1, largest=False)
    assert top_ids.shape == top_vals.shape == bottom_ids.shape == bottom_vals.shape == (F, 10)
    assert torch.equal(top_ids, ref_top.indices) and torch.equal(bottom_ids, ref_bottom.indices)
    torch.testing.assert_close(top_vals, ref_top.values)
    torch.testing.assert_close(bottom_vals, ref_bottom.values)
    assert (top_vals[:, :-1] >= top_vals[:, 1:]).all() and (bottom_vals[:, :-1] <= bottom_vals[:, 1:]).all()
    assert (bottom_vals[:, 0] < 0).all() and (top_vals[:, 0] > 0).all()


def test_output_tokens_byte_budget(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With a budget of 3 rows of logits the chunks are 3 features; the result does not change."""
    W_dec, W_U = weights
    full = output_tokens(W_dec, W_U, k=5)
    small = output_tokens(W_dec, W_U, k=5, max_bytes=3 * V * 4)
    for a, b in zip(full, small, strict=True):
        torch.testing.assert_close(a, b)  # ids equal; logits up to BLAS blocking


def test_output_tokens_validation(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    W_dec, W_U = weights
    with pytest.raises(ValueError, match="vocabulary size V=300"):
        output_tokens(W_dec, W_U, k=V + 1)
    with pytest.raises(ValueError, match="W_dec must be"):
        output_tokens(W_dec, W_U[:, :5])
    with pytest.raises(ValueError, match="chunk"):
        output_tokens(W_dec, W_U, chunk=0)


@pytest.mark.parametrize("chunk", [None, 1, 7, 13, 49, 64])
def test_similar_features_match_full_product(weights: tuple[torch.Tensor, torch.Tensor], chunk: int | None) -> None:
    W_dec, _ = weights
    unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    cos = unit @ unit.T  # (F, F)
    cos.fill_diagonal_(-torch.inf)
    ref = cos.topk(10, dim=1)
    ids, cosines = similar_features(W_dec, k=10, chunk=chunk)
    assert ids.shape == cosines.shape == (F, 10)
    assert torch.equal(ids, ref.indices)
    torch.testing.assert_close(cosines, ref.values)
    assert (ids != torch.arange(F)[:, None]).all()  # never itself


def test_similar_features_excludes_self_even_with_duplicates() -> None:
    """Identical rows: each one's neighbour is the other (cosine 1), never itself."""
    W_dec = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    ids, cosines = similar_features(W_dec, k=3, chunk=3)
    assert ids[0, 0] == 1 and ids[1, 0] == 0
    torch.testing.assert_close(cosines[:2, 0], torch.ones(2))
    assert (ids != torch.arange(4)[:, None]).all()
    torch.testing.assert_close(cosines[3], torch.zeros(3))  # a zero row is orthogonal to everything


def test_similar_features_k_too_large(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    W_dec, _ = weights
    ids, _ = similar_features(W_dec, k=F - 1)
    assert ids.shape == (F, F - 1)
    assert (
        torch.sort(ids, dim=1).values
        == torch.stack([torch.cat([torch.arange(f), torch.arange(f + 1, F)]) for f in range(F)])
    ).all()
    with pytest.raises(ValueError, match=r"k must be between 1 and F - 1 = 49 \(the other features\), got k=50"):
        similar_features(W_dec, k=F)
    with pytest.raises(ValueError, match="k must be"):
        similar_features(W_dec, k=0)
