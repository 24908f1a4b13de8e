"""`jumpscope index NAME`: one streaming pass through model and SAE, stored atomically.

The pass (trainer.analysis.index_pass) gathers every feature's statistics in tensors, from the
model's forward pass or, with `activations`, from a harvest's cache with no forward pass; this module
writes them under a new `index_runs` row in batches, then switches `saes.index_run_id` to
it in one transaction and drops the previous run. Readers follow `saes.index_run_id`, so
an interrupted run (Ctrl-C, SIGTERM, kill -9, a crash) leaves the previous complete index
visible and its own partial rows unreachable; they are removed at once when the run fails
in-process, or by the next run after a kill -9.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, func, insert, or_, update

from app.catalog.saes import RegistryError, get_sae, load_registered
from app.catalog.vocab import pack, token_strings
from app.core.database import session_scope
from app.core.tables import SNIPPET_SEPARATOR, Example, Feature, IndexContext, IndexRun, Model, SAERow, utcnow
from trainer.analysis.feature_stats import StatsConfig

log = logging.getLogger(__name__)

SEARCH_CONTEXT = (6, 4)
"""Tokens before and after each top example's max token that go into the search text."""


@dataclass
class IndexOptions:
    """Options of `jumpscope index`."""

    tokens: int = 1_000_000
    """Non-special tokens to stream."""
    dataset: str | None = None
    """HF dataset name or local file/folder; None = the packaged corpus (or the SAE's own dataset)."""
    text_column: str = "text"
    split: str = "train"
    context_size: int | None = None
    """Tokens per sequence; None = the SAE's training context size (else 128 on CPU, 1024 on GPU)."""
    batch_sequences: int = 8
    stats: StatsConfig = field(default_factory=StatsConfig)
    """What is kept per feature: top-K and band examples, their window, histogram bins, seed; and for scoring
    explanations (app.interp) the held-out top and band examples (`heldout_top`, `heldout_band`: stored with
    split 'heldout', never on the pages) and the random context windows (`contexts`: `index_contexts`)."""
    activations: Path | None = None
    """A harvest's cache (shards with token rows) to index from instead of running the model; its
    own dataset, split and context size apply, and it must come from the SAE's model, layer and site."""
    write_batch: int = 256
    """Features per write transaction."""
    device: str = "auto"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class IndexSummary:
    name: str
    run_id: int
    tokens: int
    features: int
    examples: int
    dead: int
    seconds_pass: float
    seconds_write: float


STALE_RUN_SECONDS = 600.0
"""A building run untouched this long belongs to a killed indexer; live runs touch theirs every few seconds."""
TOUCH_SECONDS = 20.0


def _dead_or_replaced(sae_id: int, keep: int | None) -> Any:
    """Runs of the SAE that may go: complete ones other than `keep`, failed ones, and stale building ones."""
    cutoff = utcnow() - timedelta(seconds=STALE_RUN_SECONDS)
    last_sign = func.coalesce(IndexRun.updated_at, IndexRun.started_at)
    return delete(IndexRun).where(
        IndexRun.sae_id == sae_id,
        IndexRun.id != (keep if keep is not None else -1),
        or_(IndexRun.status != "building", last_sign < cutoff),
    )


def _touch(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(update(IndexRun).where(IndexRun.id == run_id).values(updated_at=utcnow()))


def index_sae(
    engine: Engine,
    name: str,
    opts: IndexOptions,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    fail_after_write_batches: int | None = None,
) -> IndexSummary:
    """Index the registered SAE `name`; on_progress(tokens_done, tokens_total) after each batch.

    `fail_after_write_batches` raises after that many write transactions (tests of the
    interrupted-write path).
    """
    from trainer.analysis.index_pass import IndexPassConfig, run_index_pass
    from trainer.data.activations import ShardSource
    from trainer.data.text import default_context_size
    from trainer.device import resolve_device
    from trainer.lm.models import load_model

    with session_scope(engine) as session:
        sae = get_sae(session, name)
        if sae.model is None or sae.layer is None or sae.site is None:
            raise RegistryError(
                f"SAE {name!r} names no model, layer and site: re-import it with --model, --layer and --site"
            )
        session.execute(_dead_or_replaced(sae.id, sae.index_run_id))  # killed runs; another live one may stay
        model_name, layer, site = sae.model.name, sae.layer, sae.site
        sae_id, model_id, sae_context = sae.id, sae.model.id, sae.context_size
        dataset = (
            opts.dataset if opts.dataset is not None else (None if sae.dataset in (None, "packaged") else sae.dataset)
        )
        loaded_sae = load_registered(sae)
    shards = None
    split, text_column, context = opts.split, opts.text_column, opts.context_size
    if opts.activations is not None:
        shards = ShardSource(opts.activations)
        _check_cache(shards, name, model=model_name, layer=layer, site=site, d_in=loaded_sae.sae.cfg.d_in,
                     context_size=opts.context_size)  # fmt: skip
        meta = shards.meta
        dataset = None if meta.get("dataset") in (None, "packaged") else str(meta["dataset"])
        split, text_column = str(meta.get("split", "train")), str(meta.get("text_column", "text"))
        context = int(meta["context_size"])
    device = resolve_device(opts.device)
    lm = load_model(model_name, device=device)
    context = context or sae_context or default_context_size(device)
    pass_cfg = IndexPassConfig(
        tokens=opts.tokens, dataset=dataset, text_column=text_column, split=split, context_size=context,
        batch_sequences=opts.batch_sequences, stats=opts.stats,
    )  # fmt: skip
    params = {**asdict(pass_cfg.stats), "context_size": context, "split": split, "model": model_name,
              "text_column": text_column, **opts.extra}  # fmt: skip
    if shards is not None:
        params["activations"] = str(opts.activations)
    with session_scope(engine) as session:
        run = IndexRun(sae_id=sae_id, status="building", dataset=dataset or "packaged", params=params)
        session.add(run)
        session.flush()
        run_id = run.id
    try:
        last_touch = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last_touch[0] > TOUCH_SECONDS:
                _touch(engine, run_id)
                last_touch[0] = time.monotonic()
            if on_progress is not None:
                on_progress(done, total)

        result = _stream(lm, loaded_sae.sae, layer, site, pass_cfg, opts, progress, run_index_pass, shards)
        vocab = token_strings(lm.tokenizer)
        start = time.perf_counter()
        with session_scope(engine) as session:
            model = session.get(Model, model_id)
            assert model is not None
            if model.vocab is None or model.vocab_size != len(vocab):
                model.vocab, model.vocab_size = pack(vocab), len(vocab)
                model.n_layers, model.d_model = lm.n_layers, lm.d_model
        n_examples = write_rows(
            engine, run_id, result, vocab=vocab, batch=opts.write_batch, fail_after=fail_after_write_batches
        )
        tokens = result.stats.tokens_seen
        with session_scope(engine) as session:  # the switch: one transaction
            session.execute(
                update(IndexRun).where(IndexRun.id == run_id).values(status="complete", tokens=tokens,
                                                                      finished_at=utcnow())
            )  # fmt: skip
            session.execute(
                update(SAERow).where(SAERow.id == sae_id).values(index_run_id=run_id, indexed_tokens=tokens)
            )
        with session_scope(engine) as session:  # the old index is unreachable now; free its rows
            session.execute(_dead_or_replaced(sae_id, run_id))
        seconds_write = time.perf_counter() - start
    except BaseException:
        _drop_run(engine, run_id)
        raise
    dead = int((result.stats.fire_count == 0).sum())
    return IndexSummary(name, run_id, tokens, int(result.stats.fire_count.shape[0]), n_examples, dead,
                        result.seconds, seconds_write)  # fmt: skip


def write_rows(
    engine: Engine, run_id: int, result: Any, *, vocab: list[str], batch: int, fail_after: int | None = None
) -> int:
    """Insert the features and examples (shown and held out) of `result` under run_id, `batch` features per
    transaction, then its context windows; returns the number of examples."""
    n_examples = 0
    for i, (features, examples) in enumerate(feature_rows(run_id, result, vocab, batch)):
        if fail_after is not None and i >= fail_after:
            raise RuntimeError(f"simulated failure after {i} write batches")
        with session_scope(engine) as session:
            session.execute(insert(Feature), features)
            if examples:
                session.execute(insert(Example), examples)
            session.execute(update(IndexRun).where(IndexRun.id == run_id).values(updated_at=utcnow()))
        n_examples += len(examples)
    contexts = context_rows(run_id, result)
    if contexts:
        with session_scope(engine) as session:
            session.execute(insert(IndexContext), contexts)
    return n_examples


def context_rows(run_id: int, result: Any) -> list[dict[str, Any]]:
    """The rows of the run's random context windows, each with the ids of the features that fire in it."""
    stats, documents = result.stats, result.documents
    seqs, docs = stats.context_seq.numpy(), stats.context_doc.numpy()
    tokens, fired = stats.context_tokens.numpy(), stats.context_fired.numpy()
    rows = []
    for rank in range(seqs.shape[0]):
        if seqs[rank] < 0:
            continue
        ids = tokens[rank]
        doc = int(docs[rank])
        rows.append({
            "run_id": run_id, "rank": rank, "token_ids": ids[ids >= 0].astype("<i4").tobytes(),
            "fired": np.flatnonzero(fired[rank]).astype("<i4").tobytes(),
            "document": documents[doc][:500] if 0 <= doc < len(documents) else None,
        })  # fmt: skip
    return rows


def _stream(lm: Any, sae: Any, layer: int, site: str, pass_cfg: Any, opts: IndexOptions,
            on_progress: Callable[[int, int], None] | None, run_index_pass: Any, shards: Any) -> Any:  # fmt: skip
    from tqdm.auto import tqdm

    from trainer.analysis.index_pass import run_cached_index_pass

    total = opts.tokens if shards is None else min(opts.tokens, shards.n_tokens)
    where = " (from the cache)" if shards is not None else ""
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not opts.progress,
               desc=f"index {lm.name} L{layer} {site}{where}")  # fmt: skip

    def on_batch(seen: int) -> None:
        bar.update(min(seen, total) - bar.n)
        if on_progress is not None:
            on_progress(min(seen, total), total)

    try:
        if shards is not None:
            return run_cached_index_pass(lm, sae, shards, layer=layer, site=site, cfg=pass_cfg, on_batch=on_batch)
        return run_index_pass(lm, sae, layer=layer, site=site, cfg=pass_cfg, on_batch=on_batch)
    finally:
        bar.close()


def _check_cache(shards: Any, name: str, *, model: str, layer: int, site: str, d_in: int,
                 context_size: int | None) -> None:  # fmt: skip
    """A cache that an SAE can be indexed from: token rows of the SAE's own model, layer, site and width."""
    from trainer.data.activations import ActivationError

    meta = shards.meta
    if not shards.token_rows or meta.get("context_size") is None or meta.get("sequences") is None:
        raise ActivationError(
            f"{shards.folder} holds activations without token rows: index {name!r} with the model (no "
            "--activations), or harvest again with `jumpscope cache`, whose shards carry them"
        )
    wanted = {"model": model, "layer": layer, "site": site}
    for key, value in wanted.items():
        if meta.get(key) != value:
            raise ActivationError(
                f"{shards.folder} holds {key} {meta.get(key)!r} activations; SAE {name!r} reads {key} {value!r}"
            )
    if shards.d_in != d_in:
        raise ActivationError(f"{shards.folder} holds {shards.d_in}-wide activations; SAE {name!r} reads {d_in}")
    if context_size is not None and context_size != meta["context_size"]:
        raise ActivationError(
            f"--context-size {context_size} differs from the cache's {meta['context_size']}-token sequences"
        )


def _drop_run(engine: Engine, run_id: int) -> None:
    """Best effort: remove a failed run's rows (a later run removes them if this cannot)."""
    try:
        with session_scope(engine) as session:
            session.execute(delete(IndexRun).where(IndexRun.id == run_id))
    except Exception as err:  # the database itself may be what failed
        log.warning("could not remove the partial index run %s (%s); the next run will", run_id, err)


def _window(tokens: np.ndarray, values: np.ndarray) -> tuple[bytes, bytes]:
    valid = tokens >= 0  # -1 pads past the end of a short sequence
    return tokens[valid].astype("<i4").tobytes(), values[valid].astype("<f4").tobytes()


def _example(
    run_id: int, feature: int, band: int, rank: int, tokens: np.ndarray, values: np.ndarray, max_value: float,
    max_position: int, document: str | None, edges: tuple[float, float] | None, split: str = "shown",
) -> dict[str, Any]:  # fmt: skip
    ids, vals = _window(tokens, values)
    return {
        "run_id": run_id, "feature_index": feature, "band": band, "rank": rank, "token_ids": ids, "values": vals,
        "max_value": max_value, "max_position": max_position, "document": document,
        "band_min": edges[0] if edges else None, "band_max": edges[1] if edges else None, "split": split,
    }  # fmt: skip


_HELD_FIELDS = ("values", "seq", "doc", "pos", "window_tokens", "window_values")


def _numpy(t: Any) -> np.ndarray:
    """A result tensor as numpy (16-bit window values widened to float32)."""
    return t.float().numpy() if t.is_floating_point() else t.numpy()


def feature_rows(
    run_id: int, result: Any, vocab: list[str], batch: int
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(feature rows, example rows) for consecutive batches of features."""
    stats = result.stats
    documents = result.documents
    n_features = stats.fire_count.shape[0]
    fire = stats.fire_count.numpy()
    freq = stats.frequency.numpy()
    amax = stats.act_max.numpy()
    asum = stats.act_sum.numpy()
    scale = stats.scale.numpy()
    hist = stats.hist.numpy()
    top_v, top_doc, top_pos = stats.top_values.numpy(), stats.top_doc.numpy(), stats.top_pos.numpy()
    top_tok, top_val = stats.top_window_tokens.numpy(), stats.top_window_values.float().numpy()
    band_v, band_seq, band_doc = stats.band_values.numpy(), stats.band_seq.numpy(), stats.band_doc.numpy()
    band_pos = stats.band_pos.numpy()
    band_tok, band_val = stats.band_window_tokens.numpy(), stats.band_window_values.float().numpy()
    n_bands = stats.n_bands
    # Held-out examples (split 'heldout'): their ranks continue the shown ones' (top: by value; bands: random).
    ht = {k: _numpy(getattr(stats, f"heldout_top_{k}")) for k in _HELD_FIELDS}  # (F, H, ...)
    hb = {k: _numpy(getattr(stats, f"heldout_band_{k}")) for k in _HELD_FIELDS}  # (F, n_bands, Rh, ...)
    k_shown, r_shown = top_v.shape[1], band_v.shape[2]
    tids, tvals = result.top_token_ids.tolist(), result.top_token_values.tolist()
    bids, bvals = result.bottom_token_ids.tolist(), result.bottom_token_values.tolist()
    sids, scos = result.similar_ids.tolist(), result.similar_cosines.tolist()
    before, after = SEARCH_CONTEXT

    def doc_name(doc: int) -> str | None:
        return documents[doc][:500] if 0 <= doc < len(documents) else None

    for lo in range(0, n_features, batch):
        features: list[dict[str, Any]] = []
        examples: list[dict[str, Any]] = []
        for f in range(lo, min(lo + batch, n_features)):
            counts = hist[f]
            nonzero = np.flatnonzero(counts)
            counts_list = counts[: nonzero[-1] + 1].tolist() if nonzero.size else []
            snippets = []
            for rank in range(top_v.shape[1]):
                if not np.isfinite(top_v[f, rank]):
                    break
                tokens, pos = top_tok[f, rank], int(top_pos[f, rank])
                examples.append(
                    _example(run_id, f, -1, rank, tokens, top_val[f, rank], float(top_v[f, rank]), pos,
                             doc_name(int(top_doc[f, rank])), None)
                )  # fmt: skip
                context = [int(t) for t in tokens[max(0, pos - before) : pos + after + 1] if t >= 0]
                snippets.append("".join(vocab[t] if t < len(vocab) else "" for t in context))
            for b in range(n_bands):
                edges = (float(scale[f] * b / n_bands), float(scale[f] * (b + 1) / n_bands))
                for rank in range(band_v.shape[2]):
                    if band_seq[f, b, rank] < 0:
                        continue
                    examples.append(
                        _example(run_id, f, b, rank, band_tok[f, b, rank], band_val[f, b, rank],
                                 float(band_v[f, b, rank]), int(band_pos[f, b, rank]),
                                 doc_name(int(band_doc[f, b, rank])), edges)
                    )  # fmt: skip
                for j in range(hb["seq"].shape[2]):
                    if hb["seq"][f, b, j] >= 0:
                        examples.append(
                            _example(run_id, f, b, r_shown + j, hb["window_tokens"][f, b, j],
                                     hb["window_values"][f, b, j], float(hb["values"][f, b, j]),
                                     int(hb["pos"][f, b, j]), doc_name(int(hb["doc"][f, b, j])), edges, "heldout")
                        )  # fmt: skip
            for j in range(ht["seq"].shape[1]):
                if ht["seq"][f, j] >= 0:
                    examples.append(
                        _example(run_id, f, -1, k_shown + j, ht["window_tokens"][f, j], ht["window_values"][f, j],
                                 float(ht["values"][f, j]), int(ht["pos"][f, j]), doc_name(int(ht["doc"][f, j])),
                                 None, "heldout")
                    )  # fmt: skip
            features.append(
                dict(
                    run_id=run_id,
                    index=f,
                    fire_count=int(fire[f]),
                    frequency=float(freq[f]),
                    max_activation=float(amax[f]),
                    mean_activation=float(asum[f] / fire[f]) if fire[f] else 0.0,
                    histogram={"max": float(scale[f]), "bins": int(hist.shape[1]), "counts": counts_list},
                    top_logits=[[i, round(v, 5)] for i, v in zip(tids[f], tvals[f], strict=True)],
                    bottom_logits=[[i, round(v, 5)] for i, v in zip(bids[f], bvals[f], strict=True)],
                    similar=[[i, round(c, 5)] for i, c in zip(sids[f], scos[f], strict=True)],
                    search_text=SNIPPET_SEPARATOR.join(snippets),
                )
            )
        yield features, examples
