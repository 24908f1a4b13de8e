"""Single-pass streaming per-feature statistics for the SAE indexer.

`FeatureStats` reads SAE feature activations batch by batch (B packed sequences of S tokens, F = d_sae
features) and keeps, per feature, only tensors sized by F: counts, sums, maxima, a histogram, the top-K
activating examples (at most one per document) and small uniform samples from equal-width activation bands,
each example with its window of context. Nothing is kept per token and there is no per-feature Python loop.

Semantics (special tokens, i.e. BOS / EOS / padding, count as activation 0 everywhere and are never an
example's token):

- Counts: `tokens_seen` (non-special tokens), `fire_count` (activation > 0), `act_sum` (float64), `act_max`.
- Top-K: an example is one (sequence, max position) pair with its value; its document is that of the max
  token. Per batch every (sequence, feature) max is a candidate; candidates and the kept [F, K] examples are
  deduplicated by document (the higher value stays) and the K highest kept. Ties go to the earlier entry.
- Scale: `scale_f` is 0 until the feature first fires, then that batch's max. Whenever the running max exceeds
  it, it doubles (as often as needed), so the final scale is first max * 2**m >= act_max.
- Histogram: bin of v = min(floor(v / scale_f * n_bins), n_bins - 1). On a doubling bins 2j and 2j+1 merge
  into j. Internally bin n_bins holds the values with v / scale_f * n_bins == n_bins (v at the scale): they
  belong to the closed last bin now, but to bin n_bins / 2 after a doubling, so they are kept apart until the
  result is read. Since x -> x / 2 is exact in floating point (normal numbers), floor(v / (2s) * n) ==
  floor(floor(v / s * n) / 2): the merged histogram equals the one binned at the final scale, bit for bit.
- Bands: band of v = min(floor(v / scale_f * n_bands), n_bands - 1). Each firing token (feature, sequence,
  position) draws an independent uniform key of KEY_BITS bits; each (feature, band) keeps the band_size
  entries with the smallest keys, a uniform sample without replacement of the band's firing tokens (any
  prefix of a band in key order is again a uniform sample). Old band i covers [i, i + 1) * s / n and new band
  j covers [2j, 2j + 2) * s / n after a doubling, so old band i lies inside new band i // 2 (and after d
  doublings inside i >> d); the smallest keys of a union of populations are the smallest among each
  population's smallest keys, so re-merging the kept entries is exact. As for the histogram, the tokens at
  the scale get their own internal band n_bands until the result is read.
- Windows: `window` tokens around the example's token, start = clamp(pos - window // 2, 0, S - window), or 0
  when S <= window (then positions past S are padding: token id -1, value 0). They are gathered from the batch
  when the entry is selected, so the activations never need to be read again.

State size, defaults (K = 20, W = 64, 5 bands of 5 + the internal "at scale" band, 50 bins), per feature:
top-K windows 10,240 B (int32 tokens + float32 values), band windows 15,360 B (6 x 5 x 64 x 8), the rest
2,120 B, i.e. 27,720 B per feature: 454 MB for F = 16,384 and 1.82 GB for F = 65,536. With
`band_window_dtype="float16"` the band windows take 11,520 B and the totals are 391 MB and 1.57 GB. Per
batch `update` also makes one masked copy of `acts` and the (N, 3) int64 indices of its N non-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KEY_BITS = 40
"""Random bits of a reservoir key; the group index takes the 23 bits above them in one int64 sort key."""
_KEY_EMPTY = torch.iinfo(torch.int64).max
_MAX_SHIFT = 62
_WINDOW_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class StatsConfig:
    """What `FeatureStats` keeps per feature."""

    top_k: int = 20
    """Top activating examples per feature, at most one per document."""
    window: int = 64
    """Tokens of context kept per example, around its token (the max token for top-K)."""
    n_bands: int = 5
    """Lower activation bands: equal-width intervals of [0, scale_f], the last one closed."""
    band_size: int = 5
    """Examples sampled per band (bottom-k reservoir by random key: uniform within the band)."""
    n_bins: int = 50
    """Histogram bins of non-zero activations over [0, scale_f]; must be even (bins merge pairwise)."""
    seed: int = 0
    """Seed of the reservoir keys."""
    band_window_dtype: str = "float32"
    """Dtype of the band samples' window values: float32, float16 or bfloat16; 16 bits save 3,840 B per feature
    (see the module docstring). A string, so `dataclasses.asdict` of the config stays JSON-serialisable."""

    def __post_init__(self) -> None:
        for name in ("top_k", "window", "n_bands", "band_size", "n_bins"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_bins % 2:
            raise ValueError(f"n_bins must be even (bins merge pairwise when the scale doubles), got {self.n_bins}")
        if self.band_window_dtype not in _WINDOW_DTYPES:
            raise ValueError(
                f"band_window_dtype must be one of {', '.join(_WINDOW_DTYPES)}, got {self.band_window_dtype!r}"
            )


@dataclass
class FeatureStatsResult:
    """Everything `FeatureStats` gathered, as CPU tensors. F = d_sae, K = top_k, W = window, R = band_size.

    Examples are addressed by global sequence id (`*_seq`, consecutive in call order, -1 = empty slot), window
    start within that sequence (`*_start`) and position of the example's token within the window (`*_pos`);
    its position in the sequence is start + pos.
    """

    n_sequences: int
    """Sequences seen (their global ids are 0 .. n_sequences - 1)."""
    tokens_seen: int
    """Non-special tokens seen."""
    fire_count: Tensor
    """(F,) int64: tokens with activation > 0."""
    act_sum: Tensor
    """(F,) float64: sum of activations."""
    act_max: Tensor
    """(F,) float32: max activation (0 if never fired)."""
    frequency: Tensor
    """(F,) float64: fire_count / tokens_seen."""
    scale: Tensor
    """(F,) float32: histogram and band range [0, scale]; 0 if never fired."""
    hist: Tensor
    """(F, n_bins) int64: firing tokens per equal-width bin of [0, scale] (last bin closed)."""
    band_count: Tensor
    """(F, n_bands) int64: firing tokens per band, the population each band sample is drawn from."""
    top_values: Tensor
    """(F, K) float32, descending; -inf in empty slots."""
    top_seq: Tensor
    """(F, K) int64 global sequence id; -1 in empty slots."""
    top_doc: Tensor
    """(F, K) int64 document id of the max token; -1 in empty slots."""
    top_start: Tensor
    """(F, K) int32 window start within the sequence."""
    top_pos: Tensor
    """(F, K) int32 position of the max token within the window."""
    top_window_tokens: Tensor
    """(F, K, W) int32 token ids; -1 past the end of the sequence and in empty slots."""
    top_window_values: Tensor
    """(F, K, W) float32 activations of the feature (special tokens 0)."""
    band_values: Tensor
    """(F, n_bands, R) float32 activation of the sampled token; slots in key order, empty ones last (value 0)."""
    band_seq: Tensor
    """(F, n_bands, R) int64 global sequence id; -1 in empty slots."""
    band_doc: Tensor
    """(F, n_bands, R) int64 document id; -1 in empty slots."""
    band_start: Tensor
    """(F, n_bands, R) int32 window start within the sequence."""
    band_pos: Tensor
    """(F, n_bands, R) int32 position of the sampled token within the window."""
    band_window_tokens: Tensor
    """(F, n_bands, R, W) int32 token ids; -1 past the end of the sequence and in empty slots."""
    band_window_values: Tensor
    """(F, n_bands, R, W) activations (`band_window_dtype`)."""

    @property
    def n_bins(self) -> int:
        return self.hist.shape[1]

    @property
    def n_bands(self) -> int:
        return self.band_values.shape[1]

    @property
    def band_edges(self) -> Tensor:
        """(F, n_bands + 1) float32: band b is [edges[b], edges[b + 1]), the last one closed at the scale."""
        return self.scale[:, None] * (torch.arange(self.n_bands + 1, dtype=torch.float32) / self.n_bands)

    @property
    def hist_edges(self) -> Tensor:
        """(F, n_bins + 1) float32: bin j is [edges[j], edges[j + 1]), the last one closed at the scale."""
        return self.scale[:, None] * (torch.arange(self.n_bins + 1, dtype=torch.float32) / self.n_bins)


def _cpu(t: Tensor) -> Tensor:
    """A CPU copy that never aliases the state."""
    return t.detach().to("cpu", copy=True)


class FeatureStats:
    """Streaming per-feature statistics; call `update` per batch, then `result` (see the module docstring)."""

    def __init__(self, d_sae: int, cfg: StatsConfig | None = None, device: torch.device | str = "cpu") -> None:
        cfg = cfg or StatsConfig()
        if d_sae <= 0:
            raise ValueError(f"d_sae must be positive, got {d_sae}")
        n_groups = d_sae * (cfg.n_bands + 1)
        if n_groups >= 1 << (63 - KEY_BITS):
            raise ValueError(f"d_sae * (n_bands + 1) = {n_groups} must stay below 2**{63 - KEY_BITS}")
        self.d_sae = d_sae
        self.cfg = cfg
        self.device = torch.device(device)
        F, K, W, R = d_sae, cfg.top_k, cfg.window, cfg.band_size
        G = n_groups  # (feature, internal band) groups; internal band n_bands = "at the scale"
        dev = self.device
        i64, i32, f32 = torch.int64, torch.int32, torch.float32

        self.n_sequences = 0
        self.tokens_seen = torch.zeros((), dtype=i64, device=dev)
        self.fire_count = torch.zeros(F, dtype=i64, device=dev)
        self.act_sum = torch.zeros(F, dtype=torch.float64, device=dev)
        self.act_max = torch.zeros(F, dtype=f32, device=dev)
        self.scale = torch.zeros(F, dtype=f32, device=dev)
        self.hist = torch.zeros(F, cfg.n_bins + 1, dtype=i64, device=dev)  # (F, n_bins + 1): last = at scale
        self.band_count = torch.zeros(F, cfg.n_bands + 1, dtype=i64, device=dev)  # (F, n_bands + 1)

        self.top_values = torch.full((F, K), -torch.inf, dtype=f32, device=dev)
        self.top_seq = torch.full((F, K), -1, dtype=i64, device=dev)
        self.top_doc = torch.full((F, K), -1, dtype=i64, device=dev)
        self.top_start = torch.zeros(F, K, dtype=i32, device=dev)
        self.top_pos = torch.zeros(F, K, dtype=i32, device=dev)
        self.top_window_tokens = torch.full((F, K, W), -1, dtype=i32, device=dev)
        self.top_window_values = torch.zeros(F, K, W, dtype=f32, device=dev)

        # Band reservoirs, group g = f * (n_bands + 1) + band, slots sorted by key (empty slots last).
        self.band_key = torch.full((G, R), _KEY_EMPTY, dtype=i64, device=dev)
        self.band_values = torch.zeros(G, R, dtype=f32, device=dev)
        self.band_seq = torch.full((G, R), -1, dtype=i64, device=dev)
        self.band_doc = torch.full((G, R), -1, dtype=i64, device=dev)
        self.band_start = torch.zeros(G, R, dtype=i32, device=dev)
        self.band_pos = torch.zeros(G, R, dtype=i32, device=dev)
        self.band_window_tokens = torch.full((G, R, W), -1, dtype=i32, device=dev)
        self.band_window_values = torch.zeros(G, R, W, dtype=_WINDOW_DTYPES[cfg.band_window_dtype], device=dev)

        self._gen = torch.Generator(device=dev)
        self._gen.manual_seed(cfg.seed)

    def nbytes(self) -> int:
        """Bytes held by the state tensors."""
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, Tensor))

    @torch.no_grad()
    def update(self, acts: Tensor, token_ids: Tensor, doc_ids: Tensor, special: Tensor) -> None:
        """Add one batch: acts (B, S, F) >= 0; token_ids, doc_ids (B, S) int64; special (B, S) bool."""
        if acts.dim() != 3 or acts.shape[2] != self.d_sae:
            raise ValueError(f"acts must be (B, S, {self.d_sae}), got {tuple(acts.shape)}")
        B, S, F = acts.shape
        for name, t in (("token_ids", token_ids), ("doc_ids", doc_ids), ("special", special)):
            if tuple(t.shape) != (B, S):
                raise ValueError(f"{name} must be ({B}, {S}) like acts, got {tuple(t.shape)}")
        dev = self.device
        token_ids = token_ids.to(dev, torch.int64)
        doc_ids = doc_ids.to(dev, torch.int64)
        special = special.to(dev, torch.bool)
        a = acts.to(dev, torch.float32).masked_fill(special[:, :, None], 0.0)  # (B, S, F)
        seq0 = self.n_sequences
        self.n_sequences += B
        self.tokens_seen += (~special).sum()

        seq_max, seq_arg = a.max(dim=1)  # (B, F), (B, F): per (sequence, feature) max and its position
        batch_max = seq_max.amax(0)  # (F,)
        b_idx, s_idx, f_idx = a.nonzero(as_tuple=True)  # (N,) each: the firing tokens, row-major
        vals = a[b_idx, s_idx, f_idx]  # (N,)
        self.fire_count += torch.bincount(f_idx, minlength=F)
        self.act_sum.index_add_(0, f_idx, vals.double())
        self.act_max = torch.maximum(self.act_max, batch_max)

        doublings = self._rescale(batch_max)  # (F,)
        # Internal bin and band at the (new) scale: index n_bins / n_bands = "at the scale" (x == n).
        scale = self.scale[f_idx]  # (N,)
        bins = (vals / scale * self.cfg.n_bins).floor_().long().clamp_(0, self.cfg.n_bins)  # (N,)
        bands = (vals / scale * self.cfg.n_bands).floor_().long().clamp_(0, self.cfg.n_bands)  # (N,)
        self._update_counts(f_idx, bins, bands, doublings)
        self._update_top(a, token_ids, doc_ids, seq_max, seq_arg, seq0)
        self._update_bands(a, token_ids, doc_ids, b_idx, s_idx, f_idx, vals, bands, doublings, seq0)

    def _rescale(self, batch_max: Tensor) -> Tensor:
        """Set the scale of newly firing features, double the others' until they cover the batch max.

        Returns (F,) int64: doublings per feature in this batch.
        """
        first = (self.scale == 0) & (batch_max > 0)  # (F,)
        self.scale = torch.where(first, batch_max, self.scale)
        doublings = torch.zeros(self.d_sae, dtype=torch.int64, device=self.device)
        grow = batch_max > self.scale  # (F,)
        while bool(grow.any()):
            self.scale = torch.where(grow, self.scale * 2, self.scale)
            doublings += grow
            grow = batch_max > self.scale
        return doublings

    @staticmethod
    def _merge_columns(counts: Tensor, shift: Tensor) -> Tensor:
        """counts (r, n) with column i moved to column i >> shift (r,), summed."""
        n = counts.shape[1]
        target = torch.arange(n, device=counts.device)[None, :] >> shift.clamp(max=_MAX_SHIFT)[:, None]  # (r, n)
        return torch.zeros_like(counts).scatter_add_(1, target, counts)

    def _update_counts(self, f_idx: Tensor, bins: Tensor, bands: Tensor, doublings: Tensor) -> None:
        """Merge the histogram and band counts of rescaled features, then add the batch's firing tokens."""
        F, n, nb = self.d_sae, self.cfg.n_bins, self.cfg.n_bands
        rows = doublings.nonzero().squeeze(1)  # (r,) rescaled features
        if rows.numel():
            self.hist[rows] = self._merge_columns(self.hist[rows], doublings[rows])
            self.band_count[rows] = self._merge_columns(self.band_count[rows], doublings[rows])
        self.hist += torch.bincount(f_idx * (n + 1) + bins, minlength=F * (n + 1)).view(F, n + 1)
        self.band_count += torch.bincount(f_idx * (nb + 1) + bands, minlength=F * (nb + 1)).view(F, nb + 1)

    def _windows(self, a: Tensor, token_ids: Tensor, b: Tensor, p: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Windows around tokens (b, p) (n,) for features f (n,): start (n,), tokens (n, W) int32, values (n, W)."""
        W, S = self.cfg.window, a.shape[1]
        start = (p - W // 2).clamp(min=0).clamp(max=max(S - W, 0))  # (n,)
        idx = start[:, None] + torch.arange(W, device=a.device)  # (n, W)
        valid = idx < S  # (n, W)
        idx = idx.clamp(max=S - 1)
        tokens = token_ids[b[:, None], idx].masked_fill(~valid, -1).to(torch.int32)  # (n, W)
        values = a[b[:, None], idx, f[:, None]].masked_fill(~valid, 0.0)  # (n, W)
        return start, tokens, values

    def _update_top(
        self, a: Tensor, token_ids: Tensor, doc_ids: Tensor, seq_max: Tensor, seq_arg: Tensor, seq0: int
    ) -> None:
        K, W = self.cfg.top_k, self.cfg.window
        cand = torch.where(seq_max > 0, seq_max, -torch.inf).T  # (F, B): one candidate per (feature, sequence)
        rows = (cand > self.top_values[:, -1:]).any(1).nonzero().squeeze(1)  # (R,) features whose top-K may change
        if rows.numel() == 0:
            return
        cand = cand[rows]  # (R, B)
        cand_doc = doc_ids.gather(1, seq_arg).T[rows]  # (R, B): document of each candidate's max token
        vals = torch.cat([self.top_values[rows], cand], 1)  # (R, C), C = K + B: kept entries first
        docs = torch.cat([self.top_doc[rows], cand_doc], 1)  # (R, C)

        # One entry per document: order by value (descending), then stably by document; the first entry of each
        # document run is its best (ties: the earlier column, so kept entries and earlier sequences win).
        order = vals.argsort(dim=1, descending=True, stable=True)  # (R, C)
        order = order.gather(1, docs.gather(1, order).argsort(dim=1, stable=True))  # (R, C)
        docs_sorted = docs.gather(1, order)  # (R, C)
        first = torch.ones_like(docs_sorted, dtype=torch.bool)
        first[:, 1:] = docs_sorted[:, 1:] != docs_sorted[:, :-1]
        best = torch.zeros_like(first).scatter_(1, order, first)  # (R, C) in column order
        vals = vals.masked_fill(~best, -torch.inf)
        col = vals.argsort(dim=1, descending=True, stable=True)[:, :K]  # (R, K): chosen columns

        new_vals = vals.gather(1, col)  # (R, K)
        empty = new_vals == -torch.inf  # (R, K)
        from_state = col < K  # (R, K)
        old = col.clamp(max=K - 1)  # (R, K)
        b = (col - K).clamp(min=0)  # (R, K): batch sequence of new entries
        f = rows[:, None].expand_as(col)  # (R, K)
        is_new = ~from_state & ~empty  # (R, K)

        seq = torch.where(from_state, self.top_seq[rows].gather(1, old), seq0 + b)  # (R, K)
        doc = docs.gather(1, col)  # (R, K)
        start = self.top_start[rows].gather(1, old)  # (R, K)
        pos = self.top_pos[rows].gather(1, old)  # (R, K)
        old_w = old[:, :, None].expand(-1, -1, W)  # (R, K, W)
        win_tokens = self.top_window_tokens[rows].gather(1, old_w)  # (R, K, W)
        win_values = self.top_window_values[rows].gather(1, old_w)  # (R, K, W)

        nb, nf = b[is_new], f[is_new]  # (n,)
        npos = seq_arg[nb, nf]  # (n,): max position in the sequence
        nstart, ntokens, nvalues = self._windows(a, token_ids, nb, npos, nf)
        start[is_new] = nstart.to(torch.int32)
        pos[is_new] = (npos - nstart).to(torch.int32)
        win_tokens[is_new] = ntokens
        win_values[is_new] = nvalues

        # All of these are fresh tensors (gather / where), so they can be filled in place.
        self.top_values[rows] = new_vals
        self.top_seq[rows] = seq.masked_fill_(empty, -1)
        self.top_doc[rows] = doc.masked_fill_(empty, -1)
        self.top_start[rows] = start.masked_fill_(empty, 0)
        self.top_pos[rows] = pos.masked_fill_(empty, 0)
        self.top_window_tokens[rows] = win_tokens.masked_fill_(empty[:, :, None], -1)
        self.top_window_values[rows] = win_values.masked_fill_(empty[:, :, None], 0.0)

    def _draw_keys(self, n: int) -> Tensor:
        """(n,) int64 uniform reservoir keys in [0, 2**KEY_BITS), one per firing token in row-major order."""
        return torch.randint(0, 1 << KEY_BITS, (n,), generator=self._gen, device=self.device, dtype=torch.int64)

    def _update_bands(
        self,
        a: Tensor,
        token_ids: Tensor,
        doc_ids: Tensor,
        b_idx: Tensor,
        s_idx: Tensor,
        f_idx: Tensor,
        vals: Tensor,
        bands: Tensor,
        doublings: Tensor,
        seq0: int,
    ) -> None:
        R, W = self.cfg.band_size, self.cfg.window
        F, NB = self.d_sae, self.cfg.n_bands + 1
        dev = self.device
        keys = self._draw_keys(f_idx.numel())  # (N,)
        group = f_idx * NB + bands  # (N,)

        # A new token can only enter if its key beats the largest kept key of its group (_KEY_EMPTY while the
        # group is not full). Rescaled features are rebuilt from all their kept entries and new tokens.
        rescaled = doublings > 0  # (F,)
        threshold = self.band_key[:, -1]  # (G,): slots are sorted by key
        new = ((keys < threshold[group]) | rescaled[f_idx]).nonzero().squeeze(1)  # (n_new,) into the N tokens
        touched = torch.zeros(F, NB, dtype=torch.bool, device=dev)  # (F, NB)
        touched.view(-1)[group[new]] = True
        touched[rescaled] = True
        touched_groups = touched.view(-1).nonzero().squeeze(1)  # (T,)
        if touched_groups.numel() == 0:
            return

        # Kept entries of the touched groups, moved to their band at the current scale (i -> i >> doublings).
        tg, slot = (self.band_key[touched_groups] != _KEY_EMPTY).nonzero(as_tuple=True)  # (n_old,) each
        old_group = touched_groups[tg]  # (n_old,)
        old_flat = old_group * R + slot  # (n_old,) into the flattened (G * R) slots
        old_f = old_group // NB
        old_group = old_f * NB + ((old_group % NB) >> doublings[old_f].clamp(max=_MAX_SHIFT))  # (n_old,)
        n_old = old_flat.numel()

        # Bottom-R keys per group: sort on (group, key) packed in one int64, rank within each group run.
        cand_group = torch.cat([old_group, group[new]])  # (n_cand,)
        cand_key = torch.cat([self.band_key.view(-1)[old_flat], keys[new]])  # (n_cand,)
        order = ((cand_group << KEY_BITS) | cand_key).argsort(stable=True)  # (n_cand,)
        sorted_group = cand_group[order]
        rank = torch.arange(order.numel(), device=dev) - torch.searchsorted(sorted_group, sorted_group)
        win = rank < R
        order, dest = order[win], sorted_group[win] * R + rank[win]  # (n_win,): source and destination slot
        from_old = order < n_old  # (n_win,)

        # Gather the winners before clearing the touched groups (old winners may move within them).
        src = old_flat[order[from_old]]  # (n_win_old,)
        o_key = cand_key[order]
        o_values = self.band_values.view(-1)[src]
        o_seq = self.band_seq.view(-1)[src]
        o_doc = self.band_doc.view(-1)[src]
        o_start = self.band_start.view(-1)[src]
        o_pos = self.band_pos.view(-1)[src]
        o_tokens = self.band_window_tokens.view(-1, W)[src]  # (n_win_old, W)
        o_wvalues = self.band_window_values.view(-1, W)[src]  # (n_win_old, W)
        i = new[order[~from_old] - n_old]  # (n_win_new,) into the N tokens
        nbi, nsi, nfi = b_idx[i], s_idx[i], f_idx[i]
        n_start, n_tokens, n_wvalues = self._windows(a, token_ids, nbi, nsi, nfi)

        clear = (touched_groups[:, None] * R + torch.arange(R, device=dev)).view(-1)  # (T * R,)
        self.band_key.view(-1)[clear] = _KEY_EMPTY
        self.band_values.view(-1)[clear] = 0.0
        self.band_seq.view(-1)[clear] = -1
        self.band_doc.view(-1)[clear] = -1
        self.band_start.view(-1)[clear] = 0
        self.band_pos.view(-1)[clear] = 0
        self.band_window_tokens.view(-1, W)[clear] = -1
        self.band_window_values.view(-1, W)[clear] = 0.0

        d_old, d_new = dest[from_old], dest[~from_old]
        self.band_key.view(-1)[dest] = o_key
        self.band_values.view(-1)[d_old] = o_values
        self.band_values.view(-1)[d_new] = vals[i]
        self.band_seq.view(-1)[d_old] = o_seq
        self.band_seq.view(-1)[d_new] = seq0 + nbi
        self.band_doc.view(-1)[d_old] = o_doc
        self.band_doc.view(-1)[d_new] = doc_ids[nbi, nsi]
        self.band_start.view(-1)[d_old] = o_start
        self.band_start.view(-1)[d_new] = n_start.to(torch.int32)
        self.band_pos.view(-1)[d_old] = o_pos
        self.band_pos.view(-1)[d_new] = (nsi - n_start).to(torch.int32)
        self.band_window_tokens.view(-1, W)[d_old] = o_tokens
        self.band_window_tokens.view(-1, W)[d_new] = n_tokens
        self.band_window_values.view(-1, W)[d_old] = o_wvalues
        self.band_window_values.view(-1, W)[d_new] = n_wvalues.to(self.band_window_values.dtype)

    def result(self) -> FeatureStatsResult:
        """The statistics so far, on the CPU (the state is left untouched; `update` may continue)."""
        F, nb, R = self.d_sae, self.cfg.n_bands, self.cfg.band_size
        n = self.cfg.n_bins
        hist = self.hist[:, :n].clone()  # (F, n_bins)
        hist[:, -1] += self.hist[:, n]
        band_count = self.band_count[:, :nb].clone()  # (F, n_bands)
        band_count[:, -1] += self.band_count[:, nb]

        # The last band = the R smallest keys of internal bands n_bands - 1 and n_bands (at the scale).
        key = self.band_key.view(F, nb + 1, R)
        pick = key[:, nb - 1 :].reshape(F, 2 * R).argsort(dim=1, stable=True)[:, :R]  # (F, R) into the 2R slots

        def bands(t: Tensor) -> Tensor:
            t = t.view(F, nb + 1, R, *t.shape[2:])  # (F, nb + 1, R, ...)
            out = t[:, :nb].clone()  # (F, nb, R, ...)
            last = t[:, nb - 1 :].reshape(F, 2 * R, *t.shape[3:])  # (F, 2R, ...)
            idx = pick.view(F, R, *([1] * (t.dim() - 3))).expand(F, R, *t.shape[3:])
            out[:, -1] = last.gather(1, idx)
            return out.cpu()  # out is already a copy

        tokens_seen = int(self.tokens_seen)
        fire_count = _cpu(self.fire_count)
        return FeatureStatsResult(
            n_sequences=self.n_sequences,
            tokens_seen=tokens_seen,
            fire_count=fire_count,
            act_sum=_cpu(self.act_sum),
            act_max=_cpu(self.act_max),
            frequency=fire_count.double() / max(tokens_seen, 1),
            scale=_cpu(self.scale),
            hist=hist.cpu(),
            band_count=band_count.cpu(),
            top_values=_cpu(self.top_values),
            top_seq=_cpu(self.top_seq),
            top_doc=_cpu(self.top_doc),
            top_start=_cpu(self.top_start),
            top_pos=_cpu(self.top_pos),
            top_window_tokens=_cpu(self.top_window_tokens),
            top_window_values=_cpu(self.top_window_values),
            band_values=bands(self.band_values),
            band_seq=bands(self.band_seq),
            band_doc=bands(self.band_doc),
            band_start=bands(self.band_start),
            band_pos=bands(self.band_pos),
            band_window_tokens=bands(self.band_window_tokens),
            band_window_values=bands(self.band_window_values),
        )
