"""`jumpscope index`: the single pass on the tiny Gemma 2, stored on SQLite and Postgres."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from app.catalog.saes import import_sae
from app.catalog.vocab import unpack
from app.cli import app
from app.core.database import session_scope
from app.core.tables import Example, Feature, IndexContext, IndexRun, Model, SAERow
from app.features.indexer import IndexOptions, index_sae
from tests.app.conftest import CONTEXT, D_SAE, random_jumprelu
from trainer.analysis.feature_stats import StatsConfig
from trainer.data.text import batch_sequences, iter_documents, pack_tokens
from trainer.formats.native import SAEMetadata, save_native
from trainer.lm.models import load_model
from trainer.lm.sites import harvest

TOKENS = 1500


def opts(seed: int = 0, **overrides: Any) -> IndexOptions:
    stats = StatsConfig(top_k=4, window=16, n_bands=3, band_size=2, n_bins=10, seed=seed)
    base: dict[str, Any] = dict(tokens=TOKENS, stats=stats, device="cpu", progress=False, write_batch=16)
    return IndexOptions(**{**base, **overrides})


@torch.no_grad()
def brute_force(tiny_model_dir: Path, dataset: Path, sae: Any, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(max per feature, firing count per feature, tokens) over the same packed batches, the slow way."""
    lm = load_model(str(tiny_model_dir))
    batches = batch_sequences(pack_tokens(iter_documents(str(dataset)), lm.tokenizer, CONTEXT), 8)
    maxes, counts, seen = torch.zeros(D_SAE), torch.zeros(D_SAE, dtype=torch.long), 0
    for batch in batches:
        acts = harvest(lm.model, batch.input_ids, batch.attention_mask, 1, "resid")
        f = sae.encode(acts.reshape(-1, 64))  # (B*S, F)
        keep = ~batch.special.reshape(-1)
        f = f[keep]
        maxes = torch.maximum(maxes, f.max(0).values)
        counts += (f > 0).sum(0)
        seen += int(keep.sum())
        if seen >= n_tokens:
            break
    return maxes, counts, seen


def test_index_matches_brute_force_and_the_direct_logit_lens(
    registered: tuple[Engine, Any], tiny_model_dir: Path, short_docs: Path
) -> None:
    engine, sae = registered
    summary = index_sae(engine, "tiny", opts())
    maxes, counts, seen = brute_force(tiny_model_dir, short_docs, sae, TOKENS)
    assert summary.tokens == seen >= TOKENS
    with session_scope(engine) as session:
        row = session.scalars(select(SAERow).where(SAERow.name == "tiny")).one()
        assert row.index_run_id == summary.run_id and row.indexed_tokens == seen
        features = session.scalars(
            select(Feature).where(Feature.run_id == row.index_run_id).order_by(Feature.index)
        ).all()
        assert len(features) == D_SAE
        np.testing.assert_allclose([f.max_activation for f in features], maxes.numpy(), rtol=1e-5)
        assert [f.fire_count for f in features] == counts.tolist()
        np.testing.assert_allclose([f.frequency for f in features], (counts / seen).numpy())
        # logit lens: decoder row times unembedding, the direct way
        lm = load_model(str(tiny_model_dir))
        logits = sae.W_dec.detach() @ lm.model.get_output_embeddings().weight.detach().T  # (F, V)
        top = logits.topk(10, dim=1)
        for f in features[:5]:
            assert [t for t, _ in f.top_logits] == top.indices[f.index].tolist()
            np.testing.assert_allclose([v for _, v in f.top_logits], top.values[f.index].numpy(), atol=1e-4)
            assert [t for t, _ in f.bottom_logits] == (-logits[f.index]).topk(10).indices.tolist()
        # examples: top ones sorted by value, the first at the feature's max, windows hold the max token
        live = next(f for f in features if f.fire_count > 10)
        examples = session.scalars(
            select(Example).where(Example.run_id == row.index_run_id, Example.feature_index == live.index,
                                  Example.split == "shown")
            .order_by(Example.band, Example.rank)
        ).all()  # fmt: skip
        top_examples = [e for e in examples if e.band == -1 and e.split == "shown"]
        assert len(top_examples) == 4
        values = [e.max_value for e in top_examples]
        assert values == sorted(values, reverse=True) and values[0] == pytest.approx(live.max_activation)
        for e in examples:
            window = np.frombuffer(e.values, dtype="<f4")
            assert len(window) == len(np.frombuffer(e.token_ids, dtype="<i4")) <= 16
            assert window[e.max_position] == pytest.approx(e.max_value)
            if e.band >= 0:
                assert e.band_min <= e.max_value <= e.band_max
        assert len({e.document for e in top_examples}) == 4  # one per document
        # held out for scoring explanations: the next top-K ranks (other documents, lower values), the next band keys
        # (a held-out example that is also a shown band sample is dropped, so ranks may skip)
        held_top = [e for e in examples if e.band == -1 and e.split == "heldout"]
        assert len(held_top) <= 10 and all(4 <= e.rank < 14 for e in held_top)
        assert all(e.max_value <= values[-1] for e in held_top)
        assert not {e.document for e in held_top} & {e.document for e in top_examples}
        held_band = [e for e in examples if e.band >= 0 and e.split == "heldout"]
        assert all(e.rank >= 2 for e in held_band) and len(held_band) <= 3 * 2
        held = select(func.count()).select_from(Example).where(Example.run_id == row.index_run_id, Example.band == -1)
        assert session.scalar(held.where(Example.split == "heldout")) > 0
        assert live.search_text
        vocab = unpack(session.scalar(select(Model.vocab)))
        assert vocab[2] == "<bos>" and len(vocab) == session.scalar(select(Model.vocab_size))


def test_a_live_run_of_another_indexer_is_left_alone(registered: tuple[Engine, Any]) -> None:
    engine, _ = registered
    with session_scope(engine) as session:  # another process is building an index right now
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        other = IndexRun(sae_id=sae_id, status="building")
        session.add(other)
        session.flush()
        other_id = other.id
    mine = index_sae(engine, "tiny", opts())
    with session_scope(engine) as session:
        assert set(session.scalars(select(IndexRun.id))) == {other_id, mine.run_id}
        assert session.scalar(select(SAERow.index_run_id)) == mine.run_id


def test_rerun_replaces_the_index_atomically(registered: tuple[Engine, Any]) -> None:
    engine, _ = registered
    first = index_sae(engine, "tiny", opts())
    second = index_sae(engine, "tiny", opts(seed=1))
    assert second.run_id != first.run_id
    with session_scope(engine) as session:
        assert session.scalars(select(IndexRun.id)).all() == [second.run_id]
        assert session.scalar(select(func.count()).select_from(Feature)) == D_SAE
        assert session.scalar(select(func.count()).select_from(Example).where(Example.run_id == first.run_id)) == 0


def _visible(engine: Engine) -> tuple[int | None, int, int]:
    with session_scope(engine) as session:
        run_id = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        n_features = session.scalar(select(func.count()).select_from(Feature).where(Feature.run_id == run_id))
        n_examples = session.scalar(select(func.count()).select_from(Example).where(Example.run_id == run_id))
        return run_id, n_features or 0, n_examples or 0


def test_a_failed_write_leaves_the_previous_index_intact(registered: tuple[Engine, Any]) -> None:
    engine, _ = registered
    index_sae(engine, "tiny", opts())
    before = _visible(engine)
    with pytest.raises(RuntimeError, match="simulated failure"):
        index_sae(engine, "tiny", opts(seed=3), fail_after_write_batches=1)  # one batch of rows was written
    assert _visible(engine) == before
    with session_scope(engine) as session:
        assert session.scalars(select(IndexRun.status)).all() == ["complete"]  # the partial run was removed


def test_ctrl_c_during_the_pass_stores_nothing(registered: tuple[Engine, Any]) -> None:
    engine, _ = registered

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_sae(engine, "tiny", opts(), on_progress=interrupt)
    assert _visible(engine) == (None, 0, 0)
    with session_scope(engine) as session:
        assert session.scalars(select(IndexRun)).all() == []


def test_a_killed_run_is_invisible_and_cleaned_by_the_next(registered: tuple[Engine, Any]) -> None:
    engine, _ = registered
    index_sae(engine, "tiny", opts())
    before = _visible(engine)
    with session_scope(engine) as session:  # what kill -9 mid-write leaves behind
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        orphan = IndexRun(sae_id=sae_id, status="building", started_at=long_ago, updated_at=long_ago)
        session.add(orphan)
        session.flush()
        stats = dict(fire_count=1, frequency=1.0, max_activation=9.0, mean_activation=9.0)
        session.add(
            Feature(run_id=orphan.id, index=0, histogram={}, top_logits=[], bottom_logits=[], similar=[], **stats)
        )
    assert _visible(engine) == before
    index_sae(engine, "tiny", opts())
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(IndexRun)) == 1
        assert session.scalar(select(func.count()).select_from(Feature)) == D_SAE


def test_index_command_and_its_errors(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    args = ["index", "tiny", "--tokens", "500", "--context-size", "48", "--device", "cpu", "--top-k", "3",
            "--heldout-top", "0", "--heldout-band", "1", "--contexts", "4"]  # fmt: skip
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "indexed tiny" in result.output and "tok/s" in result.output
    with session_scope(registered[0]) as session:  # the held-out sizes asked for
        heldout = session.execute(select(Example.band, Example.feature_index).where(Example.split == "heldout")).all()
        assert heldout and all(band >= 0 for band, _ in heldout)  # no held-out top example, band samples only
        per_band = Counter(heldout)
        assert max(per_band.values()) == 1
        assert 0 < session.scalar(select(func.count()).select_from(IndexContext)) <= 4
    for bad, message in [
        (["index", "nope"], "no SAE named 'nope'"),
        (["index", "tiny", "--bins", "7"], "--bins must be even"),
        (["index", "tiny", "--contexts", "-1"], "--contexts must be at least 0"),
        (["index", "tiny", "--tokens", "0"], "--tokens must be at least 1"),
        (["index", "tiny", "--dataset", str(tmp_path / "missing.txt")], "missing.txt"),
    ]:
        result = runner.invoke(app, bad, env=env)
        assert result.exit_code == 2, (bad, result.output)
        assert message in result.output


def test_an_sae_without_a_model_cannot_be_indexed(store: Engine, tmp_path: Path) -> None:
    from app.catalog.saes import RegistryError

    save_native(tmp_path / "src", random_jumprelu(64), SAEMetadata())
    with session_scope(store) as session:
        import_sae(session, tmp_path / "src", data_dir=tmp_path / "data", name="bare")
    with pytest.raises(RegistryError, match="--model, --layer and --site"):
        index_sae(store, "bare", opts())


def _stored(engine: Engine) -> list[tuple[int, int, float]]:
    with session_scope(engine) as session:
        sae = session.scalar(select(SAERow).where(SAERow.name == "tiny"))
        assert sae is not None and sae.index_run_id is not None
        rows = session.execute(
            select(Feature.index, Feature.fire_count, Feature.max_activation)
            .where(Feature.run_id == sae.index_run_id)
            .order_by(Feature.index)
        )
        return [(int(i), int(c), float(m)) for i, c, m in rows]


def test_index_from_a_harvest_stores_what_the_live_pass_stores(
    registered: tuple[Engine, Any], db_url: str, tiny_model_dir: Path, short_docs: Path, tmp_path: Path
) -> None:
    """`jumpscope cache` then `jumpscope index --activations`: no model pass, the same stored index."""
    engine, _ = registered
    runner = CliRunner()
    env = {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    acts = tmp_path / "acts"
    cache = ["cache", "--model", str(tiny_model_dir), "--layer", "1", "--site", "resid", "--dataset", str(short_docs),
             "--context-size", str(CONTEXT), "--tokens", "4000", "--out", str(acts), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, cache, env=env)
    assert result.exit_code == 0, result.output
    index_sae(engine, "tiny", opts(dataset=str(short_docs), context_size=CONTEXT))
    live = _stored(engine)
    args = ["index", "tiny", "--activations", str(acts), "--tokens", str(TOKENS), "--device", "cpu", "--top-k", "4",
            "--window", "16", "--bands", "3", "--band-size", "2", "--bins", "10"]  # fmt: skip
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "indexed tiny" in result.output
    cached = _stored(engine)
    assert [r[:2] for r in cached] == [r[:2] for r in live] and sum(r[1] for r in live) > 0
    assert np.allclose([r[2] for r in cached], [r[2] for r in live], rtol=1e-5)
    with session_scope(engine) as session:
        run = session.scalar(select(IndexRun).join(SAERow, SAERow.index_run_id == IndexRun.id))
        assert run is not None and run.params["activations"] == str(acts)

    other = tmp_path / "layer0"
    assert runner.invoke(app, [*cache[:4], "0", *cache[5:-3], str(other), "--device", "cpu"], env=env).exit_code == 0
    plain = tmp_path / "plain"
    from trainer.data.activations import write_shards

    write_shards(plain, [torch.randn(100, 64)], {"model": str(tiny_model_dir), "layer": 1, "site": "resid"})
    for bad, message in [
        (["index", "tiny", "--activations", str(other)], "layer 0 activations; SAE 'tiny' reads layer 1"),
        (["index", "tiny", "--activations", str(plain)], "without token rows"),
        (["index", "tiny", "--activations", str(tmp_path / "none")], "does not exist"),
        (["index", "tiny", "--activations", str(acts), "--dataset", str(short_docs)], "leave out --dataset"),
        (["index", "tiny", "--activations", str(acts), "--context-size", "16"], "differs from the cache's"),
    ]:
        result = runner.invoke(app, bad, env=env)
        assert result.exit_code == 2, (bad, result.output)
        assert message in " ".join(result.output.split()), (bad, result.output)
    assert _stored(engine) == cached  # nothing a refused run did reached the index
