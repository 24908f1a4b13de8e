"""The store: migrations, constraints, import and export, on SQLite and on the real Postgres."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from app.cli import app
from app.core.database import engine_for, session_scope, upgrade
from app.core.tables import Base, IndexRun, Model, Rating, SAERow
from tests.trainer.formats.test_formats import full_meta, random_sae
from trainer.formats.gemmascope import save_gemmascope
from trainer.formats.native import save_native
from trainer.formats.saelens import save_saelens

runner = CliRunner()


def cli(db_url: str, tmp_path: Path, *args: str) -> Any:
    env = {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    return runner.invoke(app, list(args), env=env)


def test_migrations_match_the_models(store: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    from app.core.database import downgrade

    upgrade(db_url)
    engine = engine_for(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"models", "saes", "index_runs", "features", "examples", "ratings", "jobs"} <= tables
    downgrade(db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(db_url)
    assert {"ratings", "jobs"} <= set(inspect(engine).get_table_names())


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    upgrade(url)
    with engine_for(url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_unmigrated_store_names_the_fix(db_url: str) -> None:
    from app.core.database import StoreError, check_schema

    with pytest.raises(StoreError, match="jumpscope db upgrade"):
        check_schema(engine_for(db_url))


def _sae_row(session: Any, name: str = "s") -> SAERow:
    model = Model(name="m")
    row = SAERow(name=name, model=model, architecture="jumprelu", d_in=4, d_sae=8, path="/x")
    session.add(row)
    session.flush()
    return row


def test_one_rating_per_study_rater_feature_and_edits_keep_updated_at(store: Engine) -> None:
    with session_scope(store) as session:
        sae = _sae_row(session)
        session.add(Rating(sae_id=sae.id, feature_index=3, rater="ann", label="yes"))
        session.add(Rating(sae_id=sae.id, feature_index=3, rater="ann", label="no", study_id="s1"))  # other study
        session.add(Rating(sae_id=sae.id, feature_index=3, rater="bob", label="no"))
    with pytest.raises(IntegrityError), session_scope(store) as session:
        session.add(Rating(sae_id=sae.id, feature_index=3, rater="ann", label="maybe"))
    with session_scope(store) as session:
        rating = session.scalars(select(Rating).where(Rating.rater == "ann", Rating.study_id == "")).one()
        created, first_update = rating.created_at, rating.updated_at
        time.sleep(0.01)
        rating.label = "maybe"
    with session_scope(store) as session:
        rating = session.scalars(select(Rating).where(Rating.rater == "ann", Rating.study_id == "")).one()
        assert rating.label == "maybe"
        assert rating.created_at == created
        assert rating.updated_at > first_update


def test_rating_label_is_checked_by_the_database(store: Engine) -> None:
    with session_scope(store) as session:
        sae_id = _sae_row(session).id
    with pytest.raises(IntegrityError), session_scope(store) as session:
        session.add(Rating(sae_id=sae_id, feature_index=0, rater="ann", label="perhaps"))


def test_deleting_an_sae_removes_its_runs_and_ratings(store: Engine) -> None:
    with session_scope(store) as session:
        sae = _sae_row(session)
        run = IndexRun(sae_id=sae.id, status="complete")
        session.add(run)
        session.flush()
        sae.index_run_id = run.id
        session.add(Rating(sae_id=sae.id, feature_index=0, rater="ann", label="yes"))
    with session_scope(store) as session:
        session.delete(session.get(SAERow, sae.id))
    with session_scope(store) as session:
        assert session.scalars(select(Rating)).all() == []
        assert session.scalars(select(IndexRun)).all() == []


# -- import / export through the command line -------------------------------------------------------


def test_gemmascope_import_export_is_identical_array_for_array(store: Engine, db_url: str, tmp_path: Path) -> None:
    original = save_gemmascope(tmp_path / "gs" / "params.npz", random_sae("jumprelu"))
    result = cli(db_url, tmp_path, "import", str(original), "--model", "gemma3-270m", "--layer", "6", "--site", "resid")
    assert result.exit_code == 0, result.output
    assert "gemma3-270m-l6-resid" in result.output
    name = "gemma3-270m-l6-resid-48"
    out = tmp_path / "again.npz"
    result = cli(db_url, tmp_path, "export", name, str(out), "--format", "gemmascope")
    assert result.exit_code == 0, result.output
    a, b = np.load(original), np.load(out)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])
    with session_scope(engine_for(db_url)) as session:
        row = session.scalars(select(SAERow).where(SAERow.name == name)).one()
        assert (row.model.name, row.layer, row.site, row.d_sae) == ("gemma3-270m", 6, "resid", 48)
        assert Path(row.path, "sae.safetensors").is_file()


@pytest.mark.parametrize("fmt", ["native", "saelens"])
def test_import_keeps_metadata_and_exports_every_format(store: Engine, db_url: str, tmp_path: Path, fmt: str) -> None:
    sae, meta = random_sae("jumprelu"), full_meta()
    src = tmp_path / "src"
    (save_native if fmt == "native" else save_saelens)(src, sae, meta)
    metrics = tmp_path / "eval.json"
    metrics.write_text('{"l0": 12.5, "fvu": 0.2}')
    result = cli(db_url, tmp_path, "import", str(src), "--name", "mine", "--metrics", str(metrics))
    assert result.exit_code == 0, result.output
    with session_scope(engine_for(db_url)) as session:
        row = session.scalars(select(SAERow).where(SAERow.name == "mine")).one()
        assert (row.layer, row.site, row.metrics["l0"]) == (meta.layer, meta.site, 12.5)
        assert row.normalization_scale == meta.normalization_scale
    for out_fmt in ("native", "saelens", "gemmascope"):
        out = tmp_path / f"out-{out_fmt}"
        result = cli(db_url, tmp_path, "export", "mine", str(out), "--format", out_fmt)
        assert result.exit_code == 0, result.output
        assert any(out.iterdir())


def test_reimport_needs_replace_and_keeps_ratings(store: Engine, db_url: str, tmp_path: Path) -> None:
    save_native(tmp_path / "a", random_sae("jumprelu"), full_meta())
    assert cli(db_url, tmp_path, "import", str(tmp_path / "a"), "--name", "x").exit_code == 0
    engine = engine_for(db_url)
    with session_scope(engine) as session:
        row = session.scalars(select(SAERow).where(SAERow.name == "x")).one()
        path_before = row.path
        session.add(Rating(sae_id=row.id, feature_index=1, rater="ann", label="yes"))
        run = IndexRun(sae_id=row.id, status="complete")
        session.add(run)
        session.flush()
        row.index_run_id = run.id
    result = cli(db_url, tmp_path, "import", str(tmp_path / "a"), "--name", "x")
    assert result.exit_code == 2
    assert "--replace" in result.output
    result = cli(db_url, tmp_path, "import", str(tmp_path / "a"), "--name", "x", "--replace")
    assert result.exit_code == 0, result.output
    assert "1 ratings kept" in result.output
    with session_scope(engine) as session:
        row = session.scalars(select(SAERow).where(SAERow.name == "x")).one()
        assert row.index_run_id is None and row.path == path_before
        assert len(session.scalars(select(Rating)).all()) == 1
        assert session.scalars(select(IndexRun)).all() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "{tmp}/missing"], "does not exist"),
        (["import", "{tmp}/a", "--name", "Bad Name!"], "invalid SAE name"),
        (["import", "{tmp}/a", "--site", "mlp_out"], "unknown site"),
        (["export", "nope", "{tmp}/o"], "no SAE named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    store: Engine, db_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    save_native(tmp_path / "a", random_sae("jumprelu"), full_meta())
    result = cli(db_url, tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    with session_scope(engine_for(db_url)) as session:
        assert session.scalars(select(SAERow)).all() == []


def test_db_upgrade_command(db_url: str, tmp_path: Path) -> None:
    result = cli(db_url, tmp_path, "db", "upgrade")
    assert result.exit_code == 0, result.output
    from app.core.database import head_revision

    assert f"at revision {head_revision()}" in result.output
    assert "saes" in inspect(engine_for(db_url)).get_table_names()


def test_postgres_store_needs_explicit_upgrade(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        result = cli(db_url, tmp_path, "export", "nope", str(tmp_path / "o"))
        assert "no SAE named" in result.output  # SQLite: created and migrated on first use
    else:
        result = cli(db_url, tmp_path, "export", "nope", str(tmp_path / "o"))
        assert result.exit_code == 2
        assert "jumpscope db upgrade" in result.output
