"""benchmarks/short_recipe.py, the README's table of short-run variants, runs end to end with --tiny.

The real run is by hand on the demo's cache; this keeps the script working (the trainer's named
options, the validation split, the quiet-direction measures, delta LM loss on the tiny Gemma 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.runner import run_benchmark


@pytest.mark.slow
def test_the_tiny_short_recipe_table_runs_and_the_data_start_empties_the_quiet_directions(tmp_path: Path) -> None:
    result = run_benchmark("short_recipe.py", "--tiny", "--out", str(tmp_path))
    rows = {row["variant"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    before, new = rows["before (lambda 2e-4)"], rows["new short (lambda 1.2e-4)"]
    for row in (before, new):
        assert row["l0"] > 0 and 0 < row["fvu"] < 5 and abs(row["delta_lm"]) < 5
    # random rows keep about half their mass in the quiet half; rows started at centred data almost none
    assert 0.35 < before["dec_quiet"] < 0.65 and new["dec_quiet"] < 0.15
    assert "| variant | steps | L0 |" in result.stdout
