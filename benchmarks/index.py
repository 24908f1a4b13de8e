"""Indexer speed, store write/read times and memory (run by hand, not in CI).

Prints, each measured in one run:
  1. throughput: the same packed batches of the packaged corpus through Gemma 3 270M (layer 9
     resid) and an SAE, bare (model forward + SAE encode) and with the indexer's statistics
     (FeatureStats.update) on top; the overhead of the statistics as a ratio (goal <= 25%).
  2. store: a fully indexed 16,384-feature SAE (20 top + 25 band examples of 64 tokens each, and the
     10 + 10 held-out ones and 128 context windows that score explanations)
     written through the indexer's own write path, then read back (all rows, and one feature's
     dashboard data p50/p95), on SQLite and on Postgres (--postgres URL or TEST_DATABASE_URL).
  3. memory: peak RSS of a 65,536-wide index pass state plus its logit lens and similar-feature
     search against Gemma 3's 262k vocabulary, in a fresh process.

    .venv/bin/python benchmarks/index.py [--sae runs/demo/sae] [--width 16384] [--part throughput|store|memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.analysis.feature_stats import FeatureStats, FeatureStatsResult, StatsConfig
from trainer.data.text import batch_sequences, iter_documents, pack_tokens
from trainer.formats.native import load_native
from trainer.formats.tensors import sae_from_tensors
from trainer.lm.gemma3_gguf import DEFAULT_MODEL
from trainer.lm.models import load_model
from trainer.lm.sites import harvest
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.training.malloc import keep_freed_memory


def calibrated_sae(lm: Any, layer: int, width: int, l0: float, batch: Any) -> SAE:
    """A random JumpReLU SAE whose thresholds make each feature fire on ~l0/width of the tokens."""
    d = lm.d_model
    g = torch.Generator().manual_seed(0)
    w_dec = torch.nn.functional.normalize(torch.randn(width, d, generator=g), dim=1)
    acts = harvest(lm.model, batch.input_ids, batch.attention_mask, layer, "resid")
    x = acts.reshape(-1, d)[~batch.special.reshape(-1)]
    pre = x @ w_dec.T  # (n, F)
    k = max(1, int(pre.shape[0] * (1 - l0 / width)))
    threshold = pre.kthvalue(k, dim=0).values.clamp_min(1e-3)
    tensors = {"W_enc": w_dec.T.contiguous(), "W_dec": w_dec, "b_enc": torch.zeros(width), "b_dec": torch.zeros(d),
               "threshold": threshold}  # fmt: skip
    return sae_from_tensors(tensors, SAEConfig(d_in=d, d_sae=width, threshold_param="raw"), "benchmark")


def throughput(args: argparse.Namespace) -> None:
    lm = load_model(args.model)
    layer = lm.n_layers // 2 if args.layer is None else args.layer
    seqs = pack_tokens(iter_documents(None), lm.tokenizer, args.context_size)
    batches = [b for _, b in zip(range(args.rounds + 2), batch_sequences(seqs, args.batch_sequences), strict=False)]
    with torch.no_grad():
        if args.sae:
            sae = load_native(args.sae).sae
            label = f"{args.sae} ({sae.cfg.d_sae} features)"
        else:
            sae = calibrated_sae(lm, layer, args.width, args.l0, batches[0])
            label = f"random JumpReLU, {args.width} features calibrated to L0 ~{args.l0:g}"
        stats = FeatureStats(sae.cfg.d_sae, StatsConfig())
        tokens = batches[0].input_ids.numel()
        print(f"throughput: {args.model} layer {layer} resid, {label}, {tokens} tokens per batch, "
              f"{torch.get_num_threads()} threads")  # fmt: skip
        bare_times, full_times, stats_times, l0s = [], [], [], []
        for i, batch in enumerate(batches[1:]):
            for mode in ("bare", "full"):
                start = time.perf_counter()
                acts = harvest(lm.model, batch.input_ids, batch.attention_mask, layer, "resid")  # (B, S, d)
                b, s, d = acts.shape
                f = sae.encode(acts.reshape(b * s, d)).view(b, s, -1)  # (B, S, F)
                if mode == "full":
                    mid = time.perf_counter()
                    stats.update(f, batch.input_ids, batch.doc_index, batch.special)
                    stats_times.append(time.perf_counter() - mid)
                elapsed = time.perf_counter() - start
                if i > 0:  # the first round warms up
                    (bare_times if mode == "bare" else full_times).append(elapsed)
            l0s.append(float((f > 0).sum(-1).float()[~batch.special].mean()))
        bare, full = sum(bare_times), sum(full_times)
        half = len(bare_times) // 2
        late = sum(full_times[half:]) / sum(bare_times[half:]) - 1
        n = tokens * len(bare_times)
        print(f"  bare forward + encode : {n / bare:8.0f} tok/s")
        print(f"  with statistics       : {n / full:8.0f} tok/s")
        print(f"  statistics overhead   : {full / bare - 1:8.1%} over {len(bare_times)} batches, {late:.1%} over the "
              f"second half (goal <= 25%); stats median {statistics.median(stats_times) * 1e3:.0f} ms/batch, "
              f"L0 {statistics.mean(l0s):.1f}")  # fmt: skip
        print("  (the reservoirs and top-K fill during the first batches; after that few groups change per batch)")
        print(f"  state: {stats.nbytes() / 2**20:.0f} MiB for {sae.cfg.d_sae} features")


def held_out(width: int, g: torch.Generator, prefix: str, slots: tuple[int, ...], w: int) -> dict[str, torch.Tensor]:
    """Random held-out example tensors of shape (width, *slots[, w]) named prefix + field."""
    shape = (width, *slots)
    return {
        f"{prefix}values": torch.rand(*shape, generator=g),
        f"{prefix}seq": torch.randint(0, 10_000, shape, generator=g),
        f"{prefix}doc": torch.randint(0, 1000, shape, generator=g),
        f"{prefix}start": torch.zeros(*shape, dtype=torch.int32),
        f"{prefix}pos": torch.full(shape, 32, dtype=torch.int32),
        f"{prefix}window_tokens": torch.randint(0, 262_144, (*shape, w), generator=g, dtype=torch.int32),
        f"{prefix}window_values": torch.rand(*shape, w, generator=g),
    }


def synthetic_result(width: int, seed: int = 0) -> Any:
    """An IndexPassResult-like object for `width` features: 20 top and 5x5 band examples of 64 tokens each, 10 + 5x2
    held-out ones and 128 context windows (each with ~2% of the features firing)."""
    from trainer.analysis.index_pass import IndexPassResult

    g = torch.Generator().manual_seed(seed)
    k, nb, r, w = 20, 5, 5, 64
    top_values = torch.rand(width, k, generator=g).sort(dim=1, descending=True).values * 10
    stats = FeatureStatsResult(
        n_sequences=10_000,
        tokens_seen=1_000_000,
        fire_count=torch.randint(1, 10_000, (width,), generator=g),
        act_sum=torch.rand(width, dtype=torch.float64) * 1000,
        act_max=top_values[:, 0].clone(),
        frequency=torch.rand(width, dtype=torch.float64) * 0.01,
        scale=top_values[:, 0].clone(),
        hist=torch.randint(0, 100, (width, 50), generator=g),
        band_count=torch.randint(5, 100, (width, nb), generator=g),
        top_values=top_values,
        top_seq=torch.randint(0, 10_000, (width, k), generator=g),
        top_doc=torch.randint(0, 1000, (width, k), generator=g),
        top_start=torch.zeros(width, k, dtype=torch.int32),
        top_pos=torch.full((width, k), 32, dtype=torch.int32),
        top_window_tokens=torch.randint(0, 262_144, (width, k, w), generator=g, dtype=torch.int32),
        top_window_values=torch.rand(width, k, w, generator=g),
        band_values=torch.rand(width, nb, r, generator=g),
        band_seq=torch.randint(0, 10_000, (width, nb, r), generator=g),
        band_doc=torch.randint(0, 1000, (width, nb, r), generator=g),
        band_start=torch.zeros(width, nb, r, dtype=torch.int32),
        band_pos=torch.full((width, nb, r), 32, dtype=torch.int32),
        band_window_tokens=torch.randint(0, 262_144, (width, nb, r, w), generator=g, dtype=torch.int32),
        band_window_values=torch.rand(width, nb, r, w, generator=g),
        **held_out(width, g, "heldout_top_", (10,), w),
        **held_out(width, g, "heldout_band_", (nb, 2), w),
        context_seq=torch.arange(128),
        context_doc=torch.randint(0, 1000, (128,), generator=g),
        context_start=torch.zeros(128, dtype=torch.int32),
        context_tokens=torch.randint(0, 262_144, (128, w), generator=g, dtype=torch.int32),
        context_fired=torch.rand(128, width, generator=g) < 0.02,
    )
    ids = torch.randint(0, 262_144, (width, 10), generator=g)
    vals = torch.rand(width, 10, generator=g)
    return IndexPassResult(stats, [f"doc-{i}" for i in range(1000)], ids, vals, ids, -vals,
                           torch.randint(0, width, (width, 10), generator=g), vals, 0.0)  # fmt: skip


def store(args: argparse.Namespace) -> None:
    from sqlalchemy import select, text

    from app.core.database import engine_for, make_engine, normalise_url, session_scope, upgrade
    from app.core.tables import Example, IndexRun, Model, SAERow
    from app.features import queries
    from app.features.indexer import write_rows

    result = synthetic_result(args.width)
    vocab = [f"tok{i}" for i in range(262_144)]
    targets = [("sqlite", None)]
    pg = args.postgres or os.environ.get("TEST_DATABASE_URL")
    if pg:
        targets.append(("postgres", pg))
    print(f"store: {args.width} features x 65 examples (45 shown, 20 held out) x 64 tokens and 128 context windows, "
          "written through app.features.indexer.write_rows")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for kind, base in targets:
            schema = None
            if kind == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            else:
                schema = f"bench_{uuid.uuid4().hex[:8]}"
                with make_engine(base).begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = (
                    normalise_url(base)
                    .update_query_dict({"options": f"-csearch_path={schema}"})
                    .render_as_string(hide_password=False)
                )
            try:
                upgrade(url)
                engine = engine_for(url)
                with session_scope(engine) as session:
                    model = Model(name="bench")
                    sae = SAERow(
                        name="bench", model=model, architecture="jumprelu", d_in=640, d_sae=args.width, path="/"
                    )
                    session.add(sae)
                    session.flush()
                    run = IndexRun(sae_id=sae.id, status="complete")
                    session.add(run)
                    session.flush()
                    sae.index_run_id, run_id = run.id, run.id
                start = time.perf_counter()
                n = write_rows(engine, run_id, result, vocab=vocab, batch=256)
                write_s = time.perf_counter() - start
                start = time.perf_counter()
                with session_scope(engine) as session:
                    rows = sum(1 for _ in session.execute(select(Example.token_ids, Example.values)).yield_per(10_000))
                assert rows == n
                read_s = time.perf_counter() - start
                detail_ms, list_ms = [], []
                rng = torch.Generator().manual_seed(1)
                vocab_t = tuple(vocab)
                for index in torch.randint(0, args.width, (args.reads,), generator=rng).tolist():
                    start = time.perf_counter()
                    with session_scope(engine) as session:
                        queries.feature_detail(session, "bench", index, vocab_t)
                    detail_ms.append((time.perf_counter() - start) * 1e3)
                    start = time.perf_counter()
                    with session_scope(engine) as session:
                        queries.list_features(session, "bench", sort="frequency", order="desc", limit=50,
                                              offset=index % 1000)  # fmt: skip
                    list_ms.append((time.perf_counter() - start) * 1e3)

                def pct(xs: list[float], p: float) -> float:
                    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

                print(f"  {kind:8s}: write {n:,} examples in {write_s:6.1f} s ({n / write_s:,.0f} rows/s); "
                      f"read them all back in {read_s:5.1f} s; feature detail p50 {pct(detail_ms, .5):.1f} ms "
                      f"p95 {pct(detail_ms, .95):.1f} ms; feature list page p50 {pct(list_ms, .5):.1f} ms "
                      f"p95 {pct(list_ms, .95):.1f} ms")  # fmt: skip
                engine.dispose()
            finally:
                if schema is not None:
                    with make_engine(base).begin() as conn:
                        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def memory_child(width: int) -> None:
    """Runs in a fresh process: prints JSON with peak RSS figures."""
    from trainer.analysis.logit_lens import output_tokens, similar_features

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    d, vocab = 640, 262_144
    g = torch.Generator().manual_seed(0)
    w_u = torch.randn(vocab, d, generator=g)
    w_dec = torch.nn.functional.normalize(torch.randn(width, d, generator=g), dim=1)
    base = rss_mib()
    stats = FeatureStats(width, StatsConfig())
    for _ in range(3):
        f = torch.zeros(8, 128, width)
        idx = torch.randint(0, width, (8, 128, 50), generator=g)
        f.scatter_(2, idx, torch.rand(8, 128, 50, generator=g) * 5)
        stats.update(f, torch.randint(0, vocab, (8, 128)), torch.randint(0, 100, (8, 128)),
                     torch.zeros(8, 128, dtype=torch.bool))  # fmt: skip
        del f
    after_stats = rss_mib()
    result = stats.result()
    start = time.perf_counter()
    output_tokens(w_dec, w_u, k=10)
    similar_features(w_dec, k=10)
    lens_s = time.perf_counter() - start
    print(json.dumps({"width": width, "baseline_mib": base, "after_stats_mib": after_stats, "peak_mib": rss_mib(),
                      "state_mib": stats.nbytes() / 2**20, "lens_seconds": lens_s,
                      "result_top": list(result.top_values.shape)}))  # fmt: skip


def memory(args: argparse.Namespace) -> None:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(args.memory_width)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    m = json.loads(out.strip().splitlines()[-1])
    print(f"memory: {m['width']} features: statistics state {m['state_mib']:.0f} MiB; peak RSS {m['peak_mib']:.0f} MiB "
          f"(of which {m['baseline_mib']:.0f} MiB are the 262k x 640 unembedding and decoder inputs); logit lens + "
          f"similar features in {m['lens_seconds']:.1f} s")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["throughput", "store", "memory", "all"], default="all")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--sae", type=Path, default=None, help="a native SAE folder (default: a calibrated random one)")
    p.add_argument("--width", type=int, default=16_384)
    p.add_argument("--l0", type=float, default=50.0, help="target L0 of the random SAE")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-sequences", type=int, default=8)
    p.add_argument("--rounds", type=int, default=24, help="timed batches (the first one warms up)")
    p.add_argument("--reads", type=int, default=200, help="random feature reads per store")
    p.add_argument("--postgres", default=None, help="Postgres URL (default: TEST_DATABASE_URL)")
    p.add_argument("--memory-width", type=int, default=65_536)
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    keep_freed_memory()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if args.part in ("throughput", "all"):
        throughput(args)
    if args.part in ("store", "all"):
        store(args)
    if args.part in ("memory", "all"):
        memory(args)


if __name__ == "__main__":
    main()
