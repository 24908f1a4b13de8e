"""benchmarks/short_recipe.py, the README's table of short-run variants, runs end to end with --tiny.

The real run is by hand on the demo's cache; this keeps the script working (the trainer's named
options, the validation split, the quiet-direction measures, delta LM loss on the tiny Gemma 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_tiny_short_recipe_table_runs_and_the_data_start_empties_the_quiet_directions(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "short_recipe.py"), "--tiny", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = {row["variant"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    before, new = rows["before (lambda 2e-4)"], rows["new short (lambda 1.2e-4)"]
    for row in (before, new):
        assert row["l0"] > 0 and 0 < row["fvu"] < 5 and abs(row["delta_lm"]) < 5
    # random rows keep about half their mass in the quiet half; rows started at centred data almost none
    assert 0.35 < before["dec_quiet"] < 0.65 and new["dec_quiet"] < 0.15
    assert "| variant | steps | L0 |" in result.stdout
