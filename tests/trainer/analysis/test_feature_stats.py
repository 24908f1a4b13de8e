"""Streaming feature statistics against brute force over the concatenated stream.

The stream: packed sequences of random-length documents (many span several sequences), special tokens at
document starts and at random (carrying large junk activations that must be ignored), features that are dead,
rare, medium, frequent and dense, and batch-wise magnitudes that make the histogram scale double.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from trainer.analysis.feature_stats import KEY_BITS, FeatureStats, FeatureStatsResult, StatsConfig

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class Stream:
    batches: list[Batch]

    @property
    def acts(self) -> Tensor:
        """(N, S, F) activations with special tokens zeroed (needs a constant S)."""
        acts = torch.cat([b[0] for b in self.batches])
        return acts.masked_fill(self.special[:, :, None], 0.0)

    @property
    def tokens(self) -> Tensor:
        return torch.cat([b[1] for b in self.batches])

    @property
    def docs(self) -> Tensor:
        return torch.cat([b[2] for b in self.batches])

    @property
    def special(self) -> Tensor:
        return torch.cat([b[3] for b in self.batches])


def make_stream(
    seed: int = 0,
    F: int = 30,
    B: int = 3,
    S: int = 16,
    batch_scale: tuple[float, ...] = (1.0, 0.4, 2.5, 1.0, 6.0),
) -> Stream:
    g = torch.Generator().manual_seed(seed)
    N = B * len(batch_scale)
    total = N * S
    lengths = torch.randint(1, 41, (total,), generator=g)
    doc_of = torch.repeat_interleave(torch.arange(total), lengths)[:total]  # (N * S,)
    starts = torch.ones(total, dtype=torch.bool)
    starts[1:] = doc_of[1:] != doc_of[:-1]
    special = (starts | (torch.rand(total, generator=g) < 0.05)).view(N, S)
    doc_ids = (doc_of + 1000).view(N, S)
    token_ids = torch.randint(0, 500, (N, S), generator=g)
    kinds = torch.tensor([0.0, 0.004, 0.03, 0.15, 0.7])  # dead, rare, medium, frequent, dense
    p = kinds[torch.arange(F) % len(kinds)]  # (F,)
    fire = torch.rand(N, S, F, generator=g) < p
    mag = 0.5 + 3 * torch.rand(F, generator=g)
    acts = torch.rand(N, S, F, generator=g) * mag * fire
    acts *= torch.tensor(batch_scale).repeat_interleave(B)[:, None, None]
    acts[special] = 50 * torch.rand(int(special.sum()), F, generator=g)  # junk on special tokens
    batches = [(acts[i : i + B], token_ids[i : i + B], doc_ids[i : i + B], special[i : i + B]) for i in range(0, N, B)]
    return Stream(batches)


def run(stream: Stream, cfg: StatsConfig, spy: list[Tensor] | None = None) -> tuple[FeatureStats, FeatureStatsResult]:
    stats = FeatureStats(stream.batches[0][0].shape[2], cfg)
    if spy is not None:
        draw = stats._draw_keys

        def recording(n: int) -> Tensor:
            keys = draw(n)
            spy.append(keys.clone())
            return keys

        stats._draw_keys = recording  # type: ignore[method-assign]
    for batch in stream.batches:
        stats.update(*batch)
    return stats, stats.result()


def reference_scale(stream: Stream) -> Tensor:
    """The doubling rule, batch by batch."""
    F = stream.batches[0][0].shape[2]
    scale = torch.zeros(F)
    for acts, _, _, special in stream.batches:
        m = acts.masked_fill(special[:, :, None], 0.0).amax((0, 1))  # (F,)
        for f in range(F):
            if scale[f] == 0 and m[f] > 0:
                scale[f] = m[f]
            while m[f] > scale[f]:
                scale[f] *= 2
    return scale


def reference_top(A: Tensor, docs: Tensor, K: int) -> list[list[tuple[float, int, int]]]:
    """Per feature: [(value, seq, pos)] of the K best per-sequence maxima, one per document of the max token."""
    N, _, F = A.shape
    mx, arg = A.max(1)  # (N, F)
    out = []
    for f in range(F):
        best: dict[int, tuple[float, int, int]] = {}
        for n in range(N):
            v = float(mx[n, f])
            if v <= 0:
                continue
            d = int(docs[n, arg[n, f]])
            if d not in best or v > best[d][0]:
                best[d] = (v, n, int(arg[n, f]))
        out.append(sorted(best.values(), key=lambda e: (-e[0], e[1]))[:K])
    return out


def window(
    A: Tensor, tokens: Tensor, seq: int, pos: int, f: int, W: int, S: int | None = None
) -> tuple[int, list[int], list[float]]:
    """Brute-force window of sequence `seq` (length S) around `pos`, padded with -1 / 0."""
    S = A.shape[1] if S is None else S
    start = 0 if S <= W else min(max(pos - W // 2, 0), S - W)
    toks = tokens[seq, start : start + W].tolist()
    vals = A[seq, start : start + W, f].tolist()
    pad = W - len(toks)
    return start, toks + [-1] * pad, vals + [0.0] * pad


def band_of(v: Tensor, scale: Tensor, n: int) -> Tensor:
    """min(floor(v / scale * n), n - 1), in float32 like the module."""
    return (v / scale * n).floor().long().clamp(max=n - 1)


def test_counts_and_frequency() -> None:
    stream = make_stream()
    _, res = run(stream, StatsConfig(window=8))
    A, special = stream.acts, stream.special
    assert res.n_sequences == A.shape[0]
    assert res.tokens_seen == int((~special).sum())
    torch.testing.assert_close(res.fire_count, (A > 0).sum((0, 1)))
    torch.testing.assert_close(res.act_sum, A.double().sum((0, 1)))
    torch.testing.assert_close(res.act_max, A.amax((0, 1)), rtol=0, atol=0)
    torch.testing.assert_close(res.frequency, (A > 0).sum((0, 1)).double() / int((~special).sum()))
    kinds = res.fire_count.view(-1, 5).sum(0)
    assert kinds[0] == 0 and (kinds[1:] > 0).all()  # dead features stay dead despite special-token junk


def test_top_k_matches_brute_force() -> None:
    stream = make_stream()
    cfg = StatsConfig(top_k=5, window=8)
    _, res = run(stream, cfg)
    A, tokens, docs = stream.acts, stream.tokens, stream.docs
    ref = reference_top(A, docs, cfg.top_k)
    n_full = 0
    for f, entries in enumerate(ref):
        k = len(entries)
        n_full += k == cfg.top_k
        assert res.top_values[f, :k].tolist() == [e[0] for e in entries]
        assert res.top_seq[f, :k].tolist() == [e[1] for e in entries]
        assert (res.top_start[f, :k] + res.top_pos[f, :k]).tolist() == [e[2] for e in entries]
        assert (res.top_values[f, k:] == -math.inf).all() and (res.top_seq[f, k:] == -1).all()
        for j, (v, seq, pos) in enumerate(entries):
            assert res.top_doc[f, j] == docs[seq, pos]
            start, toks, vals = window(A, tokens, seq, pos, f, cfg.window)
            assert res.top_start[f, j] == start
            assert res.top_window_tokens[f, j].tolist() == toks
            assert res.top_window_values[f, j].tolist() == vals
            assert res.top_window_values[f, j, res.top_pos[f, j]] == v
        assert len(set(res.top_doc[f, :k].tolist())) == k
    assert n_full > 5  # the frequent features fill their top-K, the rare ones do not


def test_top_k_one_example_per_document() -> None:
    """Two sequences of one document: only the higher one is kept, even when the other would fit."""
    F, S = 2, 16
    acts = torch.zeros(3, S, F)
    acts[0, 3, 0], acts[1, 9, 0], acts[2, 5, 0] = 2.0, 3.0, 1.0
    docs = torch.tensor([[7] * S, [7] * S, [8] * S])
    batch = (acts, torch.arange(3 * S).view(3, S), docs, torch.zeros(3, S, dtype=torch.bool))
    stats = FeatureStats(F, StatsConfig(top_k=3, window=4))
    stats.update(*batch)
    res = stats.result()
    assert res.top_values[0].tolist() == [3.0, 1.0, -math.inf]
    assert res.top_seq[0].tolist() == [1, 2, -1]
    # The same document again in a later batch: replaces the kept example only if higher.
    stats.update(acts[:1] * 2, torch.zeros(1, S, dtype=torch.long), docs[:1], torch.zeros(1, S, dtype=torch.bool))
    stats.update(acts[2:] * 0.5, torch.zeros(1, S, dtype=torch.long), docs[2:], torch.zeros(1, S, dtype=torch.bool))
    res = stats.result()
    assert res.top_values[0].tolist() == [4.0, 1.0, -math.inf]
    assert res.top_seq[0].tolist() == [3, 2, -1]
    assert res.top_doc[0].tolist() == [7, 8, -1]
    assert (res.top_seq[1] == -1).all()


@pytest.mark.parametrize("n_bins", [50, 8])
def test_histogram_matches_numpy_at_final_scale(n_bins: int) -> None:
    stream = make_stream()
    _, res = run(stream, StatsConfig(window=8, n_bins=n_bins))
    A = stream.acts
    scale = reference_scale(stream)
    assert torch.equal(res.scale, scale)
    assert (res.scale >= res.act_max).all()
    for f in range(A.shape[2]):
        v = A[:, :, f][A[:, :, f] > 0]
        if v.numel() == 0:
            assert res.scale[f] == 0 and res.hist[f].sum() == 0
            continue
        x = (v / scale[f] * n_bins).numpy()  # the module's float32 bin coordinate
        expected, _ = np.histogram(x, bins=n_bins, range=(0, n_bins))  # integer edges: exact, last bin closed
        assert res.hist[f].tolist() == expected.tolist(), f
    assert res.hist.sum(1).tolist() == res.fire_count.tolist()


@pytest.mark.parametrize("n_bands", [5, 4])
def test_bands_exact_bottom_k_of_keys(n_bands: int) -> None:
    """The reservoirs equal the bottom-k by key of each band's tokens at the final scale, despite doublings."""
    stream = make_stream()
    cfg = StatsConfig(window=8, n_bands=n_bands, band_size=3)
    keys: list[Tensor] = []
    stats, res = run(stream, cfg, spy=keys)
    assert len(keys) == len(stream.batches)
    A, tokens, docs = stream.acts, stream.tokens, stream.docs
    B = stream.batches[0][0].shape[0]
    pool: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)  # (f, band) -> (key, seq, pos)
    for i, (acts, _, _, special) in enumerate(stream.batches):
        b, s, f = acts.masked_fill(special[:, :, None], 0.0).nonzero(as_tuple=True)
        assert keys[i].shape == f.shape and (keys[i] < 1 << KEY_BITS).all()
        bands = band_of(A[i * B + b, s, f], res.scale[f], n_bands)
        for key, bb, ss, ff, band in zip(
            keys[i].tolist(), b.tolist(), s.tolist(), f.tolist(), bands.tolist(), strict=True
        ):
            pool[(ff, band)].append((key, i * B + bb, ss))
    F = A.shape[2]
    for f in range(F):
        for band in range(n_bands):
            members = sorted(pool[(f, band)])
            assert res.band_count[f, band] == len(members)
            chosen = [(seq, pos) for _, seq, pos in members[: cfg.band_size]]
            got_seq = res.band_seq[f, band]
            k = int((got_seq >= 0).sum())
            assert (got_seq[k:] == -1).all()
            got = list(
                zip(
                    got_seq[:k].tolist(),
                    (res.band_start[f, band, :k] + res.band_pos[f, band, :k]).tolist(),
                    strict=True,
                )
            )
            assert got == chosen, (f, band)  # same tokens, in key order
            for j, (seq, pos) in enumerate(chosen):
                v = A[seq, pos, f]
                assert res.band_values[f, band, j] == v
                assert res.band_doc[f, band, j] == docs[seq, pos]
                start, toks, vals = window(A, tokens, seq, pos, f, cfg.window)
                assert res.band_start[f, band, j] == start
                assert res.band_window_tokens[f, band, j].tolist() == toks
                assert res.band_window_values[f, band, j].tolist() == vals
    assert res.band_count.sum(1).tolist() == res.fire_count.tolist()
    assert res.band_count.max() > cfg.band_size  # some bands are subsampled
    # The result leaves the state alone and never aliases it.
    res.band_seq.fill_(-5)
    assert (stats.result().band_seq != -5).all()


def test_band_samples_lie_in_their_band() -> None:
    stream = make_stream(seed=1)
    cfg = StatsConfig(window=8)
    _, res = run(stream, cfg)
    A = stream.acts
    edges = res.band_edges  # (F, n_bands + 1)
    assert edges.shape == (A.shape[2], cfg.n_bands + 1)
    n_sampled = 0
    for f in range(A.shape[2]):
        v_all = A[:, :, f][A[:, :, f] > 0]
        for band in range(cfg.n_bands):
            valid = res.band_seq[f, band] >= 0
            v = res.band_values[f, band][valid]
            n_sampled += int(valid.sum())
            assert (band_of(v, res.scale[f], cfg.n_bands) == band).all()
            lo, hi = edges[f, band], edges[f, band + 1]
            tol = 1e-6 * float(res.scale[f])
            assert (v >= lo - tol).all() and ((v < hi + tol) if band < cfg.n_bands - 1 else (v <= hi)).all()
            # distinct tokens; a band with at most band_size firing tokens keeps them all
            tokens = set(
                zip(
                    res.band_seq[f, band][valid].tolist(),
                    (res.band_start + res.band_pos)[f, band][valid].tolist(),
                    strict=True,
                )
            )
            assert len(tokens) == int(valid.sum())
            in_band = int((band_of(v_all, res.scale[f], cfg.n_bands) == band).sum())
            assert int(valid.sum()) == min(in_band, cfg.band_size)
    assert n_sampled > 0


def test_band_sampling_is_uniform_over_seeds() -> None:
    """Over 400 seeds, every token of a band with n > band_size is chosen ~ band_size / n of the time."""
    stream = make_stream(seed=2, F=10, B=2, batch_scale=(0.3, 1.0, 1.6))
    cfg = StatsConfig(window=4, band_size=3)
    n_seeds = 400
    counts: dict[tuple[int, int, int, int], int] = defaultdict(int)  # (f, band, seq, pos) -> times chosen
    for seed in range(n_seeds):
        cfg.seed = seed
        _, res = run(stream, cfg)
        f, band, slot = (res.band_seq >= 0).nonzero(as_tuple=True)
        pos = (res.band_start + res.band_pos)[f, band, slot]
        for key in zip(f.tolist(), band.tolist(), res.band_seq[f, band, slot].tolist(), pos.tolist(), strict=True):
            counts[key] += 1
    A = stream.acts
    n_checked = 0
    for f in range(A.shape[2]):
        v = A[:, :, f]
        seq, pos = (v > 0).nonzero(as_tuple=True)
        bands = band_of(v[seq, pos], res.scale[f], cfg.n_bands)
        for band in range(cfg.n_bands):
            members = [(int(s), int(p)) for s, p, b in zip(seq, pos, bands, strict=True) if b == band]
            n = len(members)
            chosen = [counts[(f, band, s, p)] for s, p in members]
            assert sum(chosen) == n_seeds * min(n, cfg.band_size)
            assert sum(counts[k] for k in counts if k[:2] == (f, band)) == sum(chosen)  # nothing outside the band
            if n <= cfg.band_size:
                assert all(c == n_seeds for c in chosen)
                continue
            p = cfg.band_size / n
            mean, sd = n_seeds * p, math.sqrt(n_seeds * p * (1 - p))
            assert all(abs(c - mean) <= 5 * sd for c in chosen), (f, band, n, chosen)
            n_checked += n
    assert n_checked > 50


def test_doubling_path() -> None:
    """First batch small, a later one 5x larger: three doublings, histogram and bands rebinned exactly."""
    F, S, n_bins = 3, 16, 10
    g = torch.Generator().manual_seed(3)
    first = torch.rand(2, S, F, generator=g) * 0.2
    first[0, 4, 0] = 0.2  # feature 0: first max exactly 0.2, at the scale
    first[1, 2, 1] = 0.5  # feature 1: first max 0.5; bin 9 (closed) now, bin 5 after one doubling
    first[:, :, 1] = first[:, :, 1].clamp(max=0.5)
    first[:, :, 2] = 0.0  # feature 2 first fires in the second batch
    second = torch.rand(2, S, F, generator=g) * 0.2
    second[1, 7, 0] = 1.0  # 5x the first max: 0.2 -> 0.4 -> 0.8 -> 1.6
    second[0, 3, 1] = 0.9  # 0.5 -> 1.0
    second[0, 1, 2] = 0.3
    none = torch.zeros(2, S, dtype=torch.bool)
    docs = torch.arange(4 * S).view(4, S)  # one document per token
    stream = Stream(
        [
            (first, torch.zeros(2, S, dtype=torch.long), docs[:2], none),
            (second, torch.zeros(2, S, dtype=torch.long), docs[2:], none),
        ]
    )
    cfg = StatsConfig(window=8, n_bins=n_bins, n_bands=5, band_size=4)
    stats = FeatureStats(F, cfg)
    scales = []
    for batch in stream.batches:
        stats.update(*batch)
        scales.append(stats.scale.clone())
    res = stats.result()
    assert scales[0].tolist() == pytest.approx([0.2, 0.5, 0.0])
    assert torch.equal(res.scale, torch.tensor([0.2, 0.5, 0.3]) * torch.tensor([8.0, 2.0, 1.0]))
    A = stream.acts
    for f in range(F):
        x = (A[:, :, f][A[:, :, f] > 0] / res.scale[f] * n_bins).numpy()
        expected, _ = np.histogram(x, bins=n_bins, range=(0, n_bins))
        assert res.hist[f].tolist() == expected.tolist()
    assert res.hist[0, :2].sum() == 63 and res.hist[0, 6] == 1  # all but 1.0 are <= 0.2, i.e. in bins 0-1
    assert res.hist[1, 5] >= 1  # 0.5 at scale 1.0: bin 5, not bin 4 (where its first-batch bin 9 would go)
    # Bands: feature 1's 0.5 was "at the scale" in batch 1 and is band 2 at the final scale.
    band1 = {
        (int(s), int(p))
        for s, p in zip(res.band_seq[1, 2], (res.band_start + res.band_pos)[1, 2], strict=True)
        if s >= 0
    }
    assert (1, 2) in band1
    assert res.band_count[1].tolist() == [
        int((band_of(A[:, :, 1][A[:, :, 1] > 0], res.scale[1], 5) == b).sum()) for b in range(5)
    ]
    # Feature 0: the 63 small values end in band 0 (sampled), 1.0 alone in band 3.
    assert res.band_count[0].tolist() == [63, 0, 0, 1, 0]
    assert (res.band_seq[0, 0] >= 0).sum() == 4 and res.band_values[0, 3, 0] == 1.0
    assert res.top_values[0, 0] == 1.0 and res.top_seq[0, 0] == 3


def test_special_tokens_never_counted_or_chosen() -> None:
    stream = make_stream(seed=4)
    _, res = run(stream, StatsConfig(window=8, top_k=8))
    special = stream.special
    assert (res.act_max <= 3.5 * 6).all()  # junk on special tokens goes up to 50
    for seq, pos in (
        (res.top_seq, res.top_start + res.top_pos),
        (res.band_seq, res.band_start + res.band_pos),
    ):
        ok = seq >= 0
        assert ok.any()
        assert not special[seq[ok], pos[ok]].any()
    # Special tokens stay in the windows (their token ids) with activation 0.
    ok = res.top_seq >= 0
    w_special = special[res.top_seq[ok][:, None], res.top_start[ok][:, None] + torch.arange(8)]  # (n, W)
    assert w_special.any() and (res.top_window_values[ok][w_special] == 0).all()
    # A feature firing only on special tokens would be dead: the dead kind (every 5th feature) stays empty.
    assert (res.fire_count[::5] == 0).all() and (res.scale[::5] == 0).all() and (res.top_seq[::5] == -1).all()
    assert (res.band_seq[::5] == -1).all() and (res.hist[::5] == 0).all()


@pytest.mark.parametrize("W", [8, 12])
def test_variable_sequence_length_and_wide_windows(W: int) -> None:
    """S changes between calls and may be shorter than the window (then the window is padded)."""
    g = torch.Generator().manual_seed(5)
    F, lengths = 6, [16, 5, 11, 16, 3]
    stats = FeatureStats(F, StatsConfig(top_k=30, window=W, band_size=100, n_bands=1))
    seqs = []
    doc = 0
    for S in lengths:
        acts = torch.rand(2, S, F, generator=g) * (torch.rand(2, S, F, generator=g) < 0.3)
        tokens = torch.randint(0, 100, (2, S), generator=g)
        docs = torch.arange(doc, doc + 2)[:, None].expand(2, S)  # one document per sequence
        doc += 2
        special = torch.zeros(2, S, dtype=torch.bool)
        special[:, 0] = True
        stats.update(acts, tokens, docs, special)
        for i in range(2):
            seqs.append((acts[i].masked_fill(special[i, :, None], 0.0), tokens[i]))
    res = stats.result()
    assert res.n_sequences == 2 * len(lengths)
    for f in range(F):
        k = 0
        for j in range(30):
            seq = int(res.top_seq[f, j])
            if seq < 0:
                break
            a, tokens = seqs[seq]
            pos = int(a[:, f].argmax())
            assert res.top_values[f, j] == a[pos, f] and res.top_start[f, j] + res.top_pos[f, j] == pos
            start, toks, vals = window(a[None], tokens[None], 0, pos, f, W)
            assert res.top_start[f, j] == start
            assert res.top_window_tokens[f, j].tolist() == toks
            assert res.top_window_values[f, j].tolist() == vals
            k += 1
        assert k == sum(int((a[:, f] > 0).any()) for a, _ in seqs)
        # one band of 100 slots keeps every firing token, each with its (padded) window
        for j in range(int((res.band_seq[f, 0] >= 0).sum())):
            seq, pos = int(res.band_seq[f, 0, j]), int(res.band_start[f, 0, j] + res.band_pos[f, 0, j])
            a, tokens = seqs[seq]
            start, toks, vals = window(a[None], tokens[None], 0, pos, f, W)
            assert res.band_window_tokens[f, 0, j].tolist() == toks
            assert res.band_window_values[f, 0, j].tolist() == vals
        assert (res.band_seq[f, 0] >= 0).sum() == sum(int((a[:, f] > 0).sum()) for a, _ in seqs)


def test_empty_and_float16_windows() -> None:
    stats = FeatureStats(4, StatsConfig(window=4, band_window_dtype="float16"))
    res = stats.result()
    assert res.n_sequences == 0 and res.tokens_seen == 0 and res.frequency.tolist() == [0.0] * 4
    assert (res.top_seq == -1).all() and (res.band_seq == -1).all() and (res.scale == 0).all()
    acts = torch.zeros(1, 6, 4)
    acts[0, 2, 1] = 0.75
    stats.update(acts, torch.arange(6)[None], torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.bool))
    res = stats.result()
    assert res.band_window_values.dtype == torch.float16
    assert res.band_values[1, 4, 0] == 0.75 and res.band_window_values[1, 4, 0].tolist() == [0.0, 0.0, 0.75, 0.0]
    assert res.band_window_tokens[1, 4, 0].tolist() == [0, 1, 2, 3]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="even"):
        StatsConfig(n_bins=5)
    with pytest.raises(ValueError, match="top_k"):
        StatsConfig(top_k=0)
    with pytest.raises(ValueError, match="band_window_dtype"):
        StatsConfig(band_window_dtype="int8")
    json.dumps(dataclasses.asdict(StatsConfig()))  # stored with the index run
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match="acts"):
        stats.update(torch.zeros(1, 3, 5), *(torch.zeros(1, 3, dtype=torch.long),) * 2, torch.zeros(1, 3).bool())


def test_memory_figures_in_docstring() -> None:
    """The per-feature state size quoted in the module docstring (39,944 B; 34,568 B with float16 windows; 27,800 B
    without held-out examples and contexts), and the context windows' fixed part (36 kB)."""

    def per_feature(cfg: StatsConfig) -> float:
        return (FeatureStats(128, cfg).nbytes() - FeatureStats(64, cfg).nbytes()) / 64

    assert per_feature(StatsConfig()) == 39_944
    assert per_feature(StatsConfig(band_window_dtype="float16")) == 34_568
    assert per_feature(StatsConfig(heldout_top=0, heldout_band=0, contexts=0)) == 27_800  # 27,720 + the top-K slots
    assert FeatureStats(64).nbytes() - 64 * 39_944 == 128 * (3 * 8 + 4 + 64 * 4) + 8 < 37_000  # + tokens_seen


# --- held-out examples and the context reservoir ---------------------------------------------------------------------


def _tokens_of(seq: Tensor, start: Tensor, pos: Tensor) -> set[tuple[int, int]]:
    ok = seq >= 0
    return set(zip(seq[ok].tolist(), (start + pos)[ok].tolist(), strict=True))


def test_shown_examples_are_what_a_state_without_heldout_slots_keeps() -> None:
    """Held-out slots and the reservoir change nothing the pages show: every shown field is identical."""
    stream = make_stream(seed=6)
    plain = StatsConfig(window=8, top_k=4, band_size=3, heldout_top=0, heldout_band=0, contexts=0)
    _, a = run(stream, plain)
    _, b = run(stream, dataclasses.replace(plain, heldout_top=5, heldout_band=2, contexts=7))
    for field in dataclasses.fields(FeatureStatsResult):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name.startswith(("heldout_", "context_")):
            continue
        assert torch.equal(x, y) if isinstance(x, Tensor) else x == y, field.name
    assert a.heldout_top_seq.shape == (30, 0) and a.context_seq.shape == (0,)
    assert int((b.heldout_top_seq >= 0).sum()) > 0 and int((b.heldout_band_seq >= 0).sum()) > 0


def test_heldout_examples_are_the_next_ranks_and_keys_and_never_repeat_a_shown_token() -> None:
    stream = make_stream(seed=7)
    cfg = StatsConfig(window=8, top_k=3, band_size=2, heldout_top=4, heldout_band=3, contexts=0)
    _, res = run(stream, cfg)
    # What a state keeping 7 top examples and 5 band samples holds, all shown: the reference for the held-out ones.
    _, wide = run(stream, StatsConfig(window=8, top_k=7, band_size=5, heldout_top=0, heldout_band=0, contexts=0))
    A = stream.acts
    n_dropped = n_held = 0
    for f in range(A.shape[2]):
        shown = _tokens_of(res.top_seq[f], res.top_start[f], res.top_pos[f]) | _tokens_of(
            res.band_seq[f], res.band_start[f], res.band_pos[f]
        )
        held_top = _tokens_of(res.heldout_top_seq[f], res.heldout_top_start[f], res.heldout_top_pos[f])
        held_band = _tokens_of(res.heldout_band_seq[f], res.heldout_band_start[f], res.heldout_band_pos[f])
        assert not held_top & shown and not held_band & shown and not held_band & held_top
        # held-out top: ranks 3..6 of the wide top-K, minus those that are shown band samples, in rank order
        ranks = [
            (int(s), int(st + p), float(v))
            for s, st, p, v in zip(wide.top_seq[f, 3:], wide.top_start[f, 3:], wide.top_pos[f, 3:],
                                   wide.top_values[f, 3:], strict=True)
            if s >= 0
        ]  # fmt: skip
        kept = [(s, p, v) for s, p, v in ranks if (s, p) not in shown]
        k = len(kept)
        n_dropped += len(ranks) - k
        assert [(int(s), int(st + p)) for s, st, p in zip(res.heldout_top_seq[f, :k], res.heldout_top_start[f, :k],
                                                         res.heldout_top_pos[f, :k], strict=True)] == [
            (s, p) for s, p, _ in kept
        ]  # fmt: skip
        assert res.heldout_top_values[f, :k].tolist() == [v for _, _, v in kept]
        assert (res.heldout_top_values[f, k:] == -math.inf).all() and (res.heldout_top_seq[f, k:] == -1).all()
        for band in range(cfg.n_bands):
            later = _tokens_of(wide.band_seq[f, band, 2:], wide.band_start[f, band, 2:], wide.band_pos[f, band, 2:])
            got = _tokens_of(res.heldout_band_seq[f, band], res.heldout_band_start[f, band],
                             res.heldout_band_pos[f, band])  # fmt: skip
            assert got == later - shown - held_top
            n_held += len(got)
            valid = res.heldout_band_seq[f, band] >= 0
            assert valid.tolist() == sorted(valid.tolist(), reverse=True)  # empty slots last
            for j in valid.nonzero().squeeze(1).tolist():
                seq, pos = (
                    int(res.heldout_band_seq[f, band, j]),
                    int(res.heldout_band_start[f, band, j] + res.heldout_band_pos[f, band, j]),
                )
                assert res.heldout_band_values[f, band, j] == A[seq, pos, f]
                start, toks, vals = window(A, stream.tokens, seq, pos, f, cfg.window)
                assert res.heldout_band_start[f, band, j] == start
                assert res.heldout_band_window_tokens[f, band, j].tolist() == toks
                assert res.heldout_band_window_values[f, band, j].tolist() == vals
    assert n_held > 20 and n_dropped > 0  # some held-out top examples were shown band samples, and were dropped


def test_context_reservoir_is_the_bottom_keys_with_the_features_firing_in_each_window() -> None:
    stream = make_stream(seed=8)
    cfg = StatsConfig(window=6, contexts=5)
    stats = FeatureStats(stream.batches[0][0].shape[2], cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 0x5EED)  # the reservoir's own generator (see FeatureStats)
    drawn: list[tuple[int, int, int]] = []  # (key, seq, start)
    seq0 = 0
    for batch in stream.batches:
        stats.update(*batch)
        B, S = batch[1].shape
        keys = torch.randint(0, 1 << KEY_BITS, (B,), generator=gen)
        starts = torch.randint(0, S - cfg.window + 1, (B,), generator=gen)
        for b in range(B):
            if not batch[3][b, starts[b] : starts[b] + cfg.window].all():  # a window of special tokens never enters
                drawn.append((int(keys[b]), seq0 + b, int(starts[b])))
        seq0 += B
    res = stats.result()
    expected = sorted(drawn)[: cfg.contexts]
    assert res.context_seq.tolist() == [s for _, s, _ in expected]
    assert res.context_start.tolist() == [st for _, _, st in expected]
    A, tokens, docs = stream.acts, stream.tokens, stream.docs
    for j, (_, seq, start) in enumerate(expected):
        assert res.context_tokens[j].tolist() == tokens[seq, start : start + cfg.window].tolist()
        assert torch.equal(res.context_fired[j], (A[seq, start : start + cfg.window] > 0).any(0))
        assert res.context_doc[j] == docs[seq, start + cfg.window // 2]
    assert 0 < int(res.context_fired.sum()) < res.context_fired.numel()  # some features fire in a window, some not


def test_context_reservoir_pads_short_sequences_and_fills_with_fewer_sequences() -> None:
    F, W = 3, 8
    stats = FeatureStats(F, StatsConfig(window=W, contexts=4))
    acts = torch.zeros(2, 5, F)
    acts[0, 1, 2] = 1.0
    special = torch.zeros(2, 5, dtype=torch.bool)
    special[1] = True  # a sequence of special tokens only (padding) gives no window
    stats.update(acts, torch.arange(10).view(2, 5), torch.zeros(2, 5, dtype=torch.long), special)
    res = stats.result()
    assert res.context_seq.tolist() == [0, -1, -1, -1]
    assert res.context_start.tolist() == [0, 0, 0, 0]
    assert res.context_tokens[0].tolist() == [0, 1, 2, 3, 4, -1, -1, -1] and (res.context_tokens[1:] == -1).all()
    assert res.context_fired.tolist() == [[False, False, True]] + [[False] * F] * 3


def test_heldout_config_validation() -> None:
    for name in ("heldout_top", "heldout_band", "contexts"):
        with pytest.raises(ValueError, match=name):
            StatsConfig(**{name: -1})
