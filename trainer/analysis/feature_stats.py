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

State size, defaults (K = 20 + 10 held out, W = 64, 5 bands of 5 + 2 held out + the internal "at scale" band,
50 bins, 128 contexts), per feature: top-K windows and places 16,320 B (30 x (64 x 8 + 32)), band windows and
places 23,016 B (6 x 7 x (64 x 8 + 36)), the rest 480 B, the contexts' fired flags 128 B, i.e. 39,944 B per
feature (27,720 B before the held-out examples and contexts): 624 MiB for F = 16,384 and 2.44 GiB for F =
65,536, plus 36 kB for the context windows. With `band_window_dtype="float16"` the band windows take 5,376 B
less (34,568 B per feature). Per batch `update` also makes one masked copy of `acts` and the (N, 3) int64
indices of its N non-zeros.

Held-out examples and contexts (for scoring explanations, app.interp) come from the same pass:

- Held-out examples: the state keeps top_k + heldout_top top examples and band_size + heldout_band samples
  per band; `result` splits them by rank, so the shown ones are exactly what a state without held-out slots
  keeps (the top_k best; the band_size smallest keys, any prefix being a uniform sample), and the held-out
  ones are the next ranks and keys. A held-out example whose token is also a shown one's is dropped (and a
  held-out band sample repeating a held-out top example), so held-out and shown never share a token.
- Contexts: each sequence draws a key (its own generator, seeded from `seed`) and a random window start; the
  `contexts` windows with the smallest keys are kept, a uniform sample of the stream's windows, each with a
  (contexts, F) flag of the features firing anywhere in it. Only a window that enters reads its activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KEY_BITS = 40
"""Random bits of a reservoir key; the group index takes the 23 bits above them in one int64 sort key."""
_KEY_EMPTY = torch.iinfo(torch.int64).max
_MAX_SHIFT = 62
_CONTEXT_SEED_OFFSET = 0x5EED
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
    """Dtype of the band samples' window values: float32, float16 or bfloat16; 16 bits save 5,376 B per feature
    (see the module docstring). A string, so `dataclasses.asdict` of the config stays JSON-serialisable."""
    heldout_top: int = 10
    """Top examples kept past the top_k shown ones (the next ranks, one per document like the rest), held out
    from the pages: explanations are scored on examples their explainer never saw (app.interp)."""
    heldout_band: int = 2
    """Band samples kept per band past the band_size shown ones (the next keys of the same reservoir: a uniform
    sample of the band, disjoint from the shown one), held out like heldout_top."""
    contexts: int = 128
    """Random context windows of the stream kept (a bottom-k reservoir, one window per sequence), each with the
    set of features that fire in it: a feature's non-activating contexts are the windows where it does not
    fire. Of 128 windows of 64 tokens, 20 or more are expected to be non-activating for a feature firing
    (independently) on up to 2.8% of the tokens; 0 turns the reservoir off."""

    def __post_init__(self) -> None:
        for name in ("top_k", "window", "n_bands", "band_size", "n_bins"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("heldout_top", "heldout_band", "contexts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or more, got {getattr(self, name)}")
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
    heldout_top_values: Tensor
    """(F, H) float32, H = heldout_top: the top examples of ranks top_k .. top_k + H - 1, held out from the pages;
    descending, -inf in empty slots (slots emptied because the token is a shown example's move to the end)."""
    heldout_top_seq: Tensor
    """(F, H) int64; -1 in empty slots. The other heldout_top_* tensors are shaped and filled like top_*."""
    heldout_top_doc: Tensor
    heldout_top_start: Tensor
    heldout_top_pos: Tensor
    heldout_top_window_tokens: Tensor
    heldout_top_window_values: Tensor
    heldout_band_values: Tensor
    """(F, n_bands, Rh) float32, Rh = heldout_band: the band samples after the shown ones in key order (a uniform
    sample of the band disjoint from the shown one), minus any whose token is a shown or held-out top example's
    or a shown band sample's; empty slots last. The other heldout_band_* tensors are shaped and filled like
    band_*."""
    heldout_band_seq: Tensor
    heldout_band_doc: Tensor
    heldout_band_start: Tensor
    heldout_band_pos: Tensor
    heldout_band_window_tokens: Tensor
    heldout_band_window_values: Tensor
    context_seq: Tensor
    """(N,) int64, N = contexts: global sequence id of each random context window, in key order; -1 in empty
    slots (fewer sequences than N)."""
    context_doc: Tensor
    """(N,) int64 document id of the window's middle token; -1 in empty slots."""
    context_start: Tensor
    """(N,) int32 window start within the sequence."""
    context_tokens: Tensor
    """(N, W) int32 token ids; -1 past the end of the sequence and in empty slots."""
    context_fired: Tensor
    """(N, F) bool: whether the feature fires on any token of the window (special tokens never fire)."""

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
        # The state keeps the shown and the held-out examples together: the top (top_k + heldout_top) and the
        # (band_size + heldout_band) smallest keys per band; result() splits them by rank.
        self._K, self._R = cfg.top_k + cfg.heldout_top, cfg.band_size + cfg.heldout_band
        F, K, W, R = d_sae, self._K, cfg.window, self._R
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
        # The top-K windows in slots that never move: top_slot (F, K) says which slot holds the entry of each rank,
        # so that a change of ranks moves K small integers per feature instead of K windows (result() sorts them).
        self.top_slot = torch.arange(K, dtype=i32, device=dev).repeat(F, 1)  # (F, K)
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

        # Context reservoir: one random window per sequence, the N smallest keys kept, slots sorted by key.
        N = cfg.contexts
        self.ctx_key = torch.full((N,), _KEY_EMPTY, dtype=i64, device=dev)
        self.ctx_seq = torch.full((N,), -1, dtype=i64, device=dev)
        self.ctx_doc = torch.full((N,), -1, dtype=i64, device=dev)
        self.ctx_start = torch.zeros(N, dtype=i32, device=dev)
        self.ctx_tokens = torch.full((N, W), -1, dtype=i32, device=dev)
        self.ctx_fired = torch.zeros(N, F, dtype=torch.bool, device=dev)

        self._gen = torch.Generator(device=dev)
        self._gen.manual_seed(cfg.seed)
        # Its own generator, so that the band keys do not depend on the context reservoir's size.
        self._ctx_gen = torch.Generator(device=dev)
        self._ctx_gen.manual_seed(cfg.seed + _CONTEXT_SEED_OFFSET)

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
        self._update_contexts(a, token_ids, doc_ids, special, seq0)

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
        K = self._K
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

        # Windows stay where they are (top_slot maps rank -> slot): a kept entry keeps its slot, new entries take
        # the slots freed by the entries that left, in slot order; only the new windows are written.
        kept = from_state & ~empty  # (R, K)
        kept_slot = self.top_slot[rows].gather(1, old).long()  # (R, K): valid where kept
        used = torch.zeros(rows.numel(), K + 1, dtype=torch.bool, device=a.device)
        used.scatter_(1, torch.where(kept, kept_slot, K), True)  # (R, K + 1): column K collects the rest
        free = used[:, :K].to(torch.int8).argsort(dim=1, stable=True)  # (R, K): free slots first, ascending
        nth_free = ((~kept).cumsum(1) - 1).clamp(min=0)  # (R, K): index among the positions without a kept entry
        slot = torch.where(kept, kept_slot, free.gather(1, nth_free))  # (R, K): a permutation of 0..K-1 per row

        nb, nf = b[is_new], f[is_new]  # (n,)
        npos = seq_arg[nb, nf]  # (n,): max position in the sequence
        nstart, ntokens, nvalues = self._windows(a, token_ids, nb, npos, nf)
        start[is_new] = nstart.to(torch.int32)
        pos[is_new] = (npos - nstart).to(torch.int32)
        n_slot = slot[is_new]  # (n,)
        self.top_window_tokens[nf, n_slot] = ntokens
        self.top_window_values[nf, n_slot] = nvalues

        # All of these are fresh tensors (gather / where), so they can be filled in place.
        self.top_values[rows] = new_vals
        self.top_seq[rows] = seq.masked_fill_(empty, -1)
        self.top_doc[rows] = doc.masked_fill_(empty, -1)
        self.top_start[rows] = start.masked_fill_(empty, 0)
        self.top_pos[rows] = pos.masked_fill_(empty, 0)
        self.top_slot[rows] = slot.to(torch.int32)

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
        R, W = self._R, self.cfg.window
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

    def _update_contexts(self, a: Tensor, token_ids: Tensor, doc_ids: Tensor, special: Tensor, seq0: int) -> None:
        """Offer one random window per sequence to the context reservoir (the N smallest keys stay).

        Every sequence draws a key and a window start; a window without a non-special token never enters. A new
        window's fired set is read from this batch's activations, so nothing is read twice."""
        N, W = self.cfg.contexts, self.cfg.window
        if N == 0:
            return
        B, S, _ = a.shape
        dev = self.device
        keys = torch.randint(0, 1 << KEY_BITS, (B,), generator=self._ctx_gen, device=dev, dtype=torch.int64)  # (B,)
        starts = torch.randint(0, max(S - W, 0) + 1, (B,), generator=self._ctx_gen, device=dev)  # (B,)
        idx = starts[:, None] + torch.arange(W, device=dev)  # (B, W)
        valid = idx < S  # (B, W): positions past a short sequence pad the window
        idx = idx.clamp(max=S - 1)
        has_text = (~special.gather(1, idx) & valid).any(1)  # (B,)
        keys = keys.masked_fill(~has_text, _KEY_EMPTY)
        if not bool((keys < self.ctx_key[-1]).any()):  # slots are sorted by key: nothing beats the largest kept
            return
        all_keys = torch.cat([self.ctx_key, keys])  # (N + B,): kept entries first, so they win ties
        order = all_keys.argsort(stable=True)[:N]  # (N,)
        new_key = all_keys[order]  # (N,)
        empty = new_key == _KEY_EMPTY  # (N,)
        from_state = order < N  # (N,)
        old = order.clamp(max=N - 1)  # (N,)
        b = (order - N).clamp(min=0)  # (N,): batch sequence of new entries
        mid = idx[b, W // 2]  # (N,): the window's middle token names its document
        tokens = token_ids[b[:, None], idx[b]].masked_fill(~valid[b], -1).to(torch.int32)  # (N, W)
        fired = self.ctx_fired[old]  # (N, F): a fresh tensor (advanced indexing), filled in place below
        for j in (~from_state & ~empty).nonzero().squeeze(1).tolist():
            bj, s0 = int(b[j]), int(starts[b[j]])
            fired[j] = (a[bj, s0 : s0 + W] > 0).any(0)  # (F,) features firing anywhere in the window
        fired[empty] = False
        self.ctx_key = new_key
        self.ctx_seq = torch.where(from_state, self.ctx_seq[old], seq0 + b).masked_fill_(empty, -1)
        self.ctx_doc = torch.where(from_state, self.ctx_doc[old], doc_ids[b, mid]).masked_fill_(empty, -1)
        self.ctx_start = torch.where(from_state, self.ctx_start[old], starts[b].to(torch.int32)).masked_fill_(empty, 0)
        self.ctx_tokens = torch.where(from_state[:, None], self.ctx_tokens[old], tokens).masked_fill_(
            empty[:, None], -1
        )
        self.ctx_fired = fired

    def result(self) -> FeatureStatsResult:
        """The statistics so far, on the CPU (the state is left untouched; `update` may continue).

        The kept examples are split by rank: the first top_k top examples and band_size band samples are the
        shown ones, the rest held out; a held-out example whose token is also a shown example's (a top example
        is often a band sample too) or, for band samples, a held-out top example's is dropped, so the held-out
        examples never repeat a shown one."""
        F, nb, R = self.d_sae, self.cfg.n_bands, self._R
        K, R_shown = self.cfg.top_k, self.cfg.band_size
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

        top = {name: _cpu(getattr(self, f"top_{name}")) for name in _EXAMPLE_FIELDS[:5]}  # (F, K + H)
        slot = self.top_slot.long()[:, :, None].expand(-1, -1, self.cfg.window)  # (F, K + H, W)
        hole = (self.top_seq < 0)[:, :, None]  # (F, K + H, 1): empty ranks hold no window
        top["window_tokens"] = self.top_window_tokens.gather(1, slot).masked_fill_(hole, -1).cpu()
        top["window_values"] = self.top_window_values.gather(1, slot).masked_fill_(hole, 0.0).cpu()
        band = {name: bands(getattr(self, f"band_{name}")) for name in _EXAMPLE_FIELDS}  # (F, nb, R, ...)
        held_top = {name: t[:, K:].clone() for name, t in top.items()}  # (F, H, ...)
        held_band = {name: t[:, :, R_shown:].clone() for name, t in band.items()}  # (F, nb, R - R_shown, ...)
        _drop_repeats(top, band, held_top, held_band, K, R_shown)

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
            **{f"top_{name}": t[:, :K].clone() for name, t in top.items()},
            **{f"band_{name}": t[:, :, :R_shown].clone() for name, t in band.items()},
            **{f"heldout_top_{name}": t for name, t in held_top.items()},
            **{f"heldout_band_{name}": t for name, t in held_band.items()},
            context_seq=_cpu(self.ctx_seq),
            context_doc=_cpu(self.ctx_doc),
            context_start=_cpu(self.ctx_start),
            context_tokens=_cpu(self.ctx_tokens),
            context_fired=_cpu(self.ctx_fired),
        )


_EXAMPLE_FIELDS = ("values", "seq", "doc", "start", "pos", "window_tokens", "window_values")
"""The per-example tensors of the top-K and the band samples (`top_*`, `band_*` in the state and the result)."""
_EMPTY_FILL = {"values": 0.0, "seq": -1, "doc": -1, "start": 0, "pos": 0, "window_tokens": -1, "window_values": 0.0}
"""What an empty example slot holds (top values: -inf instead)."""
_DROP_CHUNK = 8192
"""Features compared at once when held-out examples are checked against the shown ones (bounds the memory)."""


def _token_keys(ex: dict[str, Tensor], empty: int) -> Tensor:
    """One int64 per example slot naming its token (sequence, position in the sequence); `empty` in empty slots."""
    key = (ex["seq"] << 24) | (ex["start"] + ex["pos"]).long()  # positions stay far below 2**24
    return key.masked_fill(ex["seq"] < 0, empty)


def _drop_repeats(
    top: dict[str, Tensor], band: dict[str, Tensor], held_top: dict[str, Tensor], held_band: dict[str, Tensor],
    K: int, R_shown: int,
) -> None:  # fmt: skip
    """Empty (in place) the held-out slots whose token is a shown example's, or (band samples) a held-out top
    example's, then move the kept ones to the front of their rows in their order."""
    F = top["seq"].shape[0]
    if held_top["seq"].shape[1] == 0 and held_band["seq"].shape[2] == 0:
        return
    nb = band["seq"].shape[1]
    shown_top = _token_keys({k: t[:, :K] for k, t in top.items()}, -1)  # (F, K)
    shown_band = _token_keys({k: t[:, :, :R_shown] for k, t in band.items()}, -1).reshape(F, -1)  # (F, nb * R)
    h_top = _token_keys(held_top, -2)  # (F, H): -2 never matches a shown slot's -1
    keep_top = torch.empty_like(h_top, dtype=torch.bool)
    for lo in range(0, F, _DROP_CHUNK):
        sl = slice(lo, lo + _DROP_CHUNK)
        keep_top[sl] = (h_top[sl] >= 0) & ~(h_top[sl, :, None] == shown_band[sl, None, :]).any(2)
    _compact(held_top, keep_top, top_values=True)
    h_top = _token_keys(held_top, -1)  # the kept held-out top examples
    h_band = _token_keys(held_band, -2).reshape(F, -1)  # (F, nb * Rh)
    keep_band = torch.empty_like(h_band, dtype=torch.bool)
    for lo in range(0, F, _DROP_CHUNK):
        sl = slice(lo, lo + _DROP_CHUNK)
        others = torch.cat([shown_top[sl], h_top[sl], shown_band[sl]], 1)  # (f, M)
        keep_band[sl] = (h_band[sl] >= 0) & ~(h_band[sl, :, None] == others[:, None, :]).any(2)
    _compact(held_band, keep_band.view(F, nb, -1), top_values=False)


def _compact(ex: dict[str, Tensor], keep: Tensor, *, top_values: bool) -> None:
    """Move the kept slots (keep (..., n) bool) to the front of their rows, in order; empty the rest (in place)."""
    order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)  # (..., n)
    kept = keep.gather(-1, order)  # (..., n)
    for name, t in ex.items():
        idx = order.view(*order.shape, *([1] * (t.dim() - order.dim()))).expand_as(t)
        moved = t.gather(order.dim() - 1, idx)
        fill = -torch.inf if (top_values and name == "values") else _EMPTY_FILL[name]
        mask = ~kept.view(*kept.shape, *([1] * (t.dim() - kept.dim())))
        t.copy_(moved.masked_fill(mask, fill))
