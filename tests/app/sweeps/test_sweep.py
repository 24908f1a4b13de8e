"""`jumpscope sweep` end to end on the tiny random Gemma 2: files, store, API and /compare pages.

The tiny model's numbers mean nothing; these tests check the plumbing: every point trained and
evaluated on the same held-out tokens, the results written, plotted, stored and linked, a second
run resuming without retraining, and bad input refused with one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.commands import parse_overrides
from app.core.database import engine_for, session_scope, upgrade
from app.core.tables import SAERow, Sweep, SweepPointRow
from app.sweeps.chart import ChartPoint, pareto_svg
from app.sweeps.cli import TINY_GRID, parse_grid
from app.sweeps.results import PLOTS
from app.sweeps.run import store_sweep
from tests.app.test_api import make_client
from tests.conftest import database
from trainer.sweep.grid import SweepConfig, SweepPoint
from trainer.sweep.pareto import matched_l0

JUMPSCOPE = [sys.executable, "-m", "app"]
SIZES = ["--train-tokens", "8192", "--eval-tokens", "2048", "--lm-tokens", "256", "--device", "cpu"]
N_POINTS = sum(len(v) for v in TINY_GRID.values())
SVG = "{http://www.w3.org/2000/svg}"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JUMPSCOPE, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env})


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny sweep through the real CLI, registered in a SQLite store."""
    folder = tmp_path_factory.mktemp("sweep")
    env = {"DATABASE_URL": f"sqlite:///{folder / 'cli.db'}", "JUMPSCOPE_DATA_DIR": str(folder / "data")}
    result = run("sweep", "--tiny", "--out", str(folder / "run"), *SIZES, "--index-tokens", "600", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": folder, "out": folder / "run", "env": env, "stdout": result.stdout, "stderr": result.stderr}


def test_every_point_is_trained_evaluated_and_written(swept: dict[str, Any]) -> None:
    out = swept["out"]
    doc = json.loads((out / "results.json").read_text())
    rows = doc["points"]
    expected = {(arch, float(v)) for arch, values in TINY_GRID.items() for v in values}
    assert {(r["architecture"], r["value"]) for r in rows} == expected
    for row in rows:
        assert (out / "saes" / SweepPoint(row["architecture"], row["value"]).slug / "sae.safetensors").exists()
        assert row["l0"] > 0 and row["fvu"] > 0 and math.isfinite(row["delta_lm_loss"])
        assert row["fvu_typical"] > 0 and 0 <= row["massive_fraction"] < 0.5
        assert row["tokens"] == 2048  # the same held-out activations for every SAE
        assert row["lm_tokens"] >= 256  # and the same predictions
        if row["architecture"] == "topk":
            assert row["l0"] <= row["value"]  # TopK keeps at most k latents per token
    assert len({r["clean_lm_loss"] for r in rows}) == 1  # one clean pass shared: paired deltas
    assert doc["config"]["train_tokens"] == 8192 and doc["config"]["width"] == 64
    assert set(doc["budget"]) == {"harvest", "train", "eval", "total"} and doc["budget"]["total"] > 0
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["sae"], float(r["fvu"])) for r in table] == [(r["sae"], r["fvu"]) for r in rows]
    assert [float(r["fvu_typical"]) for r in table] == [r["fvu_typical"] for r in rows]
    assert set(doc["matched_l0"]) == {"fvu", "delta_lm_loss", "fvu_typical"}
    assert "sweep pareto-tiny" in swept["stdout"] and "budget:" in swept["stderr"]


def test_plots_are_standalone_svg_with_a_link_per_point(swept: dict[str, Any]) -> None:
    for metric in ("fvu", "delta_lm_loss"):
        root = ET.fromstring((swept["out"] / f"{metric}.svg").read_text())
        assert root.tag == f"{SVG}svg"
        links = sorted(a.get("href") or "" for a in root.iter(f"{SVG}a"))
        assert links == sorted(f"/saes/pareto-tiny-{p.slug}" for p in SweepConfig(grid=TINY_GRID).points())
        assert len(list(root.iter(f"{SVG}polyline"))) == len(TINY_GRID)  # one line per architecture


def test_a_second_run_resumes_without_retraining(swept: dict[str, Any]) -> None:
    out = swept["out"]
    weights = {p: p.stat().st_mtime_ns for p in out.glob("saes/*/sae.safetensors")}
    timings = json.loads((out / "timings.json").read_text())
    result = run("sweep", "--tiny", "--out", str(out), "--no-register", *SIZES, env=swept["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("saes/*/sae.safetensors")} == weights
    after = json.loads((out / "timings.json").read_text())
    assert {k: v for k, v in after.items() if k.startswith(("train:", "harvest"))} == {
        k: v for k, v in timings.items() if k.startswith(("train:", "harvest"))
    }


def test_other_settings_in_the_same_folder_are_refused(swept: dict[str, Any]) -> None:
    result = run("sweep", "--tiny", "--out", str(swept["out"]), *SIZES, "--seed", "1", env=swept["env"])
    assert result.returncode == 2
    assert "holds a sweep with other settings (config differ)" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "topk"], "--grid takes ARCH=V1,V2,..."),
        (["--grid", "topk=a,b"], "the values must be numbers"),
        (["--grid", "resnet=1"], "unknown architectures in the grid: resnet"),
        (["--grid", "topk=2.5"], "k must be a whole number"),
        (["--grid", "relu=-1"], "values must be positive"),
        (["--name", "Bad Name"], "invalid SAE name"),
        (["--train-tokens", "10"], "must be at least batch_size"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--set", "bandwidth"], "--set takes FIELD=VALUE"),
        (["--set", "d_sae=9"], "cannot override d_sae: allowed are"),
        (["--epochs", "0"], "epochs must be in (0, 100]"),
        (["--index-tokens", "500"], "indexing needs --register"),
    ],
)
def test_bad_options_get_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("sweep", "--tiny", "--out", str(tmp_path / "x"), "--no-register", *args, env={})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


# --- the store, the API and the pages ---------------------------------------------------------------------------


def written_svgs(out: Path) -> dict[str, str]:
    """The plots `jumpscope sweep` wrote beside results.json, as it stores them."""
    return {metric: (out / f"{metric}.svg").read_text().removesuffix("\n") for metric in PLOTS}


@pytest.fixture(params=["sqlite", "postgres"])
def stored(request: pytest.FixtureRequest, swept: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The tiny sweep stored in a fresh SQLite or Postgres store (as `jumpscope sweep` stores it)."""
    doc = json.loads((swept["out"] / "results.json").read_text())
    dirs = {r["sae"]: swept["out"] / "saes" / SweepPoint(r["architecture"], r["value"]).slug for r in doc["points"]}
    with database(request.param, tmp_path) as url:
        upgrade(url)
        store_sweep(engine_for(url), doc, dirs=dirs, data_dir=tmp_path / "data", svgs=written_svgs(swept["out"]))
        yield url, tmp_path


@pytest.fixture
def client(stored: tuple[str, Path]) -> Iterator[TestClient]:
    with make_client(*stored) as c:
        yield c


def test_the_cli_registered_every_sae_and_the_sweep(swept: dict[str, Any]) -> None:
    engine = engine_for(swept["env"]["DATABASE_URL"])
    with session_scope(engine) as session:
        sweep = session.scalar(select(Sweep).where(Sweep.name == "pareto-tiny"))
        assert sweep is not None and set(sweep.plots) == {"fvu", "delta_lm_loss"}
        points = session.scalars(select(SweepPointRow).where(SweepPointRow.sweep_id == sweep.id)).all()
        assert len(points) == N_POINTS
        for point in points:
            slug = SweepPoint(point.architecture, point.value).slug
            assert point.sae is not None and point.sae.name == f"pareto-tiny-{slug}"
            assert point.sae.architecture == point.architecture and point.sae.metrics["l0"] == point.metrics["l0"]
            # --index-tokens: indexed from the sweep's own cache, with no model pass
            assert point.sae.index_run is not None and point.sae.indexed_tokens >= 600
            assert point.sae.index_run.params["activations"] == str(swept["out"] / "activations")
    assert "from the cache (no model pass)" in swept["stderr"]


def test_storing_again_replaces_the_sweep_and_keeps_one_row_per_point(stored: tuple[str, Path], swept: dict) -> None:
    url, folder = stored
    doc = json.loads((swept["out"] / "results.json").read_text())
    dirs = {r["sae"]: swept["out"] / "saes" / SweepPoint(r["architecture"], r["value"]).slug for r in doc["points"]}
    store_sweep(engine_for(url), doc, dirs=dirs, data_dir=folder / "data", svgs=written_svgs(swept["out"]))
    with session_scope(engine_for(url)) as session:
        assert len(session.scalars(select(Sweep)).all()) == 1
        assert len(session.scalars(select(SweepPointRow)).all()) == N_POINTS
        assert len(session.scalars(select(SAERow).where(SAERow.name.like("pareto-%"))).all()) == N_POINTS


def test_api_lists_and_details_the_sweep(client: TestClient) -> None:
    listed = client.get("/api/v1/sweeps").json()
    assert [(s["name"], s["n_points"], s["architectures"]) for s in listed] == [
        ("pareto-tiny", N_POINTS, list(TINY_GRID))
    ]
    detail = client.get("/api/v1/sweeps/pareto-tiny").json()
    assert len(detail["points"]) == N_POINTS and detail["config"]["width"] == 64
    assert all(p["sae"].startswith("pareto-") and p["fvu"] > 0 for p in detail["points"])
    for entry in detail["matched_l0"]["fvu"]:
        assert entry["difference"] == pytest.approx(entry["other"] - entry["reference"])
    reply = client.get("/api/v1/sweeps/pareto-tiny/results.csv")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(reply.text)))) == N_POINTS
    reply = client.get("/api/v1/sweeps/pareto-tiny/plots/fvu.svg")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(reply.text).tag == f"{SVG}svg"


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/api/v1/sweeps/nope", "no sweep named 'nope'"),
        ("/api/v1/sweeps/nope/results.csv", "no sweep named 'nope'"),
        ("/api/v1/sweeps/pareto-tiny/plots/l1.svg", "sweep 'pareto-tiny' has no plot 'l1'"),
    ],
)
def test_api_unknown_sweep_or_plot_is_404(client: TestClient, path: str, detail: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404 and detail in reply.json()["detail"]


def test_compare_pages_plot_every_point_and_link_every_sae(client: TestClient) -> None:
    page = client.get("/compare")
    assert page.status_code == 200 and 'href="/compare/pareto-tiny"' in page.text
    page = client.get("/compare/pareto-tiny")
    assert page.status_code == 200
    svgs = [ET.fromstring(m) for m in _svgs(page.text)]
    assert len(svgs) == 2
    for svg in svgs:
        links = {a.get("href") for a in svg.iter(f"{SVG}a")}
        assert len(links) == N_POINTS
        for link in links:  # every point opens its SAE's page, which links back to the sweep
            sae_page = client.get(str(link))
            assert sae_page.status_code == 200 and 'href="/compare/pareto-tiny">sweep pareto-tiny</a>' in sae_page.text
    assert "At matched L0" in page.text and "/api/v1/sweeps/pareto-tiny/results.csv" in page.text


def test_compare_pages_empty_and_missing(client: TestClient, stored: tuple[str, Path]) -> None:
    assert "No such sweep" in client.get("/compare/nope").text
    assert client.get("/compare/nope").status_code == 404
    with session_scope(engine_for(stored[0])) as session:
        for sweep in session.scalars(select(Sweep)):
            session.delete(sweep)
    page = client.get("/compare")
    assert page.status_code == 200 and "No sweeps yet" in page.text and "jumpscope sweep --quick" in page.text


def test_a_deleted_sae_leaves_its_point_unlinked(client: TestClient, stored: tuple[str, Path]) -> None:
    with session_scope(engine_for(stored[0])) as session:
        session.delete(session.scalars(select(SAERow).where(SAERow.name.like("pareto-tiny-topk-%"))).first())
    detail = client.get("/api/v1/sweeps/pareto-tiny").json()
    assert sum(p["sae"] is None for p in detail["points"]) == 1
    page = client.get("/compare/pareto-tiny")
    assert page.status_code == 200 and "deleted" in page.text
    links = {a.get("href") for a in ET.fromstring(_svgs(page.text)[0]).iter(f"{SVG}a")}
    assert len(links) == N_POINTS - 1


def _svgs(html: str) -> list[str]:
    parts = html.split("<svg ")[1:]
    return ["<svg " + p[: p.index("</svg>") + len("</svg>")] for p in parts]


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_matched_l0_interpolates_linearly_in_log_l0() -> None:
    rows = [
        {"architecture": "jumprelu", "l0": 20.0, "fvu": 0.30},
        {"architecture": "jumprelu", "l0": 200.0, "fvu": 0.10},
        {"architecture": "relu", "l0": 10.0, "fvu": 0.50},
        {"architecture": "relu", "l0": 100.0, "fvu": 0.30},
    ]
    out = matched_l0(rows, "fvu")
    # relu at L0 20: log-linear between (10, .5) and (100, .3) -> .5 - .2 * log10(2)
    assert len(out) == 1  # L0 200 lies outside relu's range: no extrapolation
    assert out[0]["l0"] == 20.0 and out[0]["architecture"] == "relu"
    assert out[0]["other"] == pytest.approx(0.5 - 0.2 * math.log10(2))
    assert out[0]["difference"] == pytest.approx(out[0]["other"] - 0.30)
    assert out[0]["ratio"] == pytest.approx(out[0]["other"] / 0.30)
    assert matched_l0([{"architecture": "jumprelu", "l0": 5.0, "delta_lm_loss": -0.1}, *rows], "delta_lm_loss") == []


def test_sweep_points_and_config_validate() -> None:
    assert SweepPoint("topk", 48).slug == "topk-k48"
    assert SweepPoint("jumprelu", 2e-4).slug == "jumprelu-lambda0.0002"
    with pytest.raises(ValueError, match="k must be a whole number"):
        SweepPoint("topk", 2.5)
    with pytest.raises(ValueError, match="architecture must be one of"):
        SweepPoint("vanilla", 1)
    points = SweepConfig(grid={"topk": (32, 8), "relu": (0.1,)}).points()
    assert [p.slug for p in points] == ["relu-lambda0.1", "topk-k8", "topk-k32"]
    with pytest.raises(ValueError, match="the grid holds no points"):
        SweepConfig(grid={})
    assert parse_grid(["topk=8,16", "relu=1e-3"]) == {"topk": (8.0, 16.0), "relu": (0.001,)}
    assert parse_overrides(["bandwidth=0.01", "threshold_param=raw", "normalize=false"]) == {
        "bandwidth": 0.01,
        "threshold_param": "raw",
        "normalize": False,
    }


def test_named_deviations_reach_every_sae_and_win_over_the_recipe(tmp_path: Path) -> None:
    from app.sweeps.run import train_point
    from trainer.data.activations import write_shards
    from trainer.formats.native import SAEMetadata

    acts = tmp_path / "acts"
    write_shards(acts, iter([torch.randn(4096, 16)]), {"layer": 0})
    cfg = SweepConfig(width=32, train_tokens=4096, batch_size=1024, epochs=2, grid={"jumprelu": (1e-3,)},
                      overrides={"bandwidth": 0.05, "threshold_init": 0.2, "lr": 3e-4})  # fmt: skip
    train_point(cfg.points()[0], cfg, activations=acts, out_dir=tmp_path / "sae", meta=SAEMetadata(), device="cpu",
                progress=False)  # fmt: skip
    resolved = json.loads((tmp_path / "sae" / "train_config.json").read_text())
    assert resolved["sae"]["bandwidth"] == 0.05 and resolved["sae"]["threshold_init"] == 0.2
    assert resolved["sae"]["threshold_param"] == "raw"  # the short recipe still applies where not overridden
    assert resolved["train"]["lr"] == 3e-4 and resolved["train"]["tokens"] == 8192  # two epochs of 4096


def test_the_default_batch_of_1024_trains_with_bounded_adam_steps(tmp_path: Path) -> None:
    """The sweep's default batch (1,024) is safe only because the short recipe bounds every Adam step
    (update_clip): at that batch the rare massive tokens arrive one batch at a time (README, "Steps at
    the defaults"). ReLU, which blew up there under plain Adam, gets the bound and the batch."""
    from app.sweeps.run import train_point
    from trainer.data.activations import write_shards
    from trainer.formats.native import SAEMetadata

    acts = tmp_path / "acts"
    write_shards(acts, iter([torch.randn(4096, 16)]), {"layer": 0})
    cfg = SweepConfig(width=32, train_tokens=4096, grid={"relu": (1e-3,)})
    assert cfg.batch_size == 1024
    train_point(cfg.points()[0], cfg, activations=acts, out_dir=tmp_path / "sae", meta=SAEMetadata(), device="cpu",
                progress=False)  # fmt: skip
    resolved = json.loads((tmp_path / "sae" / "train_config.json").read_text())["train"]
    assert (resolved["batch_size"], resolved["tokens"], resolved["update_clip"]) == (1024, 4096, 3.0)
    assert resolved["max_norm_ratio"] is None


def test_chart_escapes_labels_and_handles_no_points() -> None:
    evil = '<script>alert(1)</script>"'
    svg = str(pareto_svg({"jumprelu": [ChartPoint(10, 0.2, evil, '/saes/"x"'), ChartPoint(20, 0.1, "b")]}, "FVU", evil))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and 'href="/saes/&#34;x&#34;"' in svg
    ET.fromstring(svg)  # well-formed
    assert "no points yet" in str(pareto_svg({"relu": []}, "FVU", "empty"))
